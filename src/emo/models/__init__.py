"""Model registries: image backbones, heads on cached features, and every trained-model kind
behind one interface (`EmoModel`; `load(model_dir)` → `.genes`, `.backbone`, `.predict(source, embed)`, `.save`, `.model_id`)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "attention_mil": ["AttentionMILConfig", "AttentionMILHead"],
        "backbone_specs": ["BACKBONES", "list_backbones"],
        "backbones": ["Backbone", "create_backbone"],
        "heads": ["HEADS", "LinearHead", "MLPConfig", "MLPHead", "fit_ridge_path", "get_head_class"],
        "model": ["Model", "save_model"],
        "registry": ["EmoModel", "MODEL_KINDS", "load", "load_kind"],
    },
)
