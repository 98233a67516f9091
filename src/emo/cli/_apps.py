"""The typer apps every command module attaches to (kept apart so modules never import each other)."""

import typer

app = typer.Typer(
    name="emo",
    help="Predict gene expression from H&E whole-slide images and validate it (EMO, Wang et al. 2021).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's help: wraps at any width, never truncates an option name
)
expression_app = typer.Typer(help="RNA-seq matrices → training targets.", no_args_is_help=True)
analyze_app = typer.Typer(help="Statistics and analyses of predicted expression.", no_args_is_help=True)
app.add_typer(expression_app, name="expression")
app.add_typer(analyze_app, name="analyze")
