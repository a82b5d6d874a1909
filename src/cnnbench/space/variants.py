"""What a command line changes in a space file before a sweep runs it: ``--set`` fixes
parameters (an ablation of a recipe), ``--recipe-only`` reduces the space to its recipe,
and ``tabulate`` trains a multi-fidelity table one fidelity (one rung's setting) at a time.
Each returns a new Space validated as the file itself is, with a source naming the change,
so an error still says which file and which option."""
from __future__ import annotations

from cnnbench.space import Space, SpaceError, parse_space


def recipe_alone(space: Space, final: bool | None = None) -> Space:
    """``space`` reduced to its first start_with recipe (else its centre): every parameter
    that applies fixed at the recipe's value, so the sweep has one configuration and its
    final training is the only training there is (--recipe-only: what the hour buys without
    a search, the yardstick a search has to beat)."""
    if final is False or not space.final:
        raise SpaceError(f"{space.source}: --recipe-only trains the recipe as the final training on all training "
                         "images; it cannot go with --no-final or final: false")
    recipe = space.recipe()
    raw = space.model_dump(mode="json")
    chosen = space.complete(recipe)
    for name, param in list(raw["params"].items()):
        if param.get("type") == "fixed":
            continue
        if name in recipe:
            raw["params"][name] = {"type": "fixed", "value": chosen[name]}
        else:  # a conditional parameter the recipe does not use (its condition fails)
            del raw["params"][name]
    raw["start_with"], raw["search"]["rungs"] = [], []
    origin = "its first start_with recipe" if space.start_with else "its centre (no start_with recipe)"
    return parse_space(raw, f"{space.source} (--recipe-only: {origin})")


def with_settings(space: Space, settings: tuple[str, ...] | list[str]) -> Space:
    """``space`` with each "knob=value" of ``settings`` as a fixed parameter (dropped from
    start_with, which then no longer chooses it), validated as the file itself is."""
    import yaml

    values = {}
    for setting in settings:
        name, equals, text = setting.partition("=")
        name = name.strip()
        if not equals or not name:
            raise SpaceError(f"--set {setting!r}: write it as KNOB=VALUE, e.g. --set lookahead=false")
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[name] = text
    return with_fixed(space, values, f"with --set {' '.join(settings)}")


def with_fixed(space: Space, values: dict, change: str, rungs: list | None = None) -> Space:
    """``space`` with each of ``values`` a fixed parameter (and out of start_with), and its
    successive-halving rungs replaced by ``rungs`` when given; ``change`` says what was done,
    after the file's name, in every error."""
    raw = space.model_dump(mode="json")
    for name, value in values.items():
        raw["params"][name] = {"type": "fixed", "value": value}
        raw["start_with"] = [{k: v for k, v in recipe.items() if k != name} for recipe in raw["start_with"]]
    if rungs is not None:
        raw["search"]["rungs"] = [dict(rung) for rung in rungs]
    return parse_space(raw, f"{space.source} ({change})")


def at_fidelity(space: Space, rung: int) -> Space:
    """``space`` at the fidelity of its ``rung`` only (its train_images, epochs, batch size
    and views fixed), without successive halving: one level of a multi-fidelity table."""
    if not 0 <= rung < len(space.search.rungs):
        raise SpaceError(f"{space.source}: search.rungs: no rung {rung} (it has {len(space.search.rungs)})")
    return with_fixed(space, dict(space.search.rungs[rung]), f"at {space.rung_name(rung)}", rungs=[])
