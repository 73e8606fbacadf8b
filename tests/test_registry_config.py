"""Registry, recipes and overrides."""
import pytest

from metricvision._registry import Registry
from metricvision.config import Recipe, apply_overrides, from_dict, load_recipe


def test_registry_create_drops_none_and_names_allowed():
    reg: Registry = Registry("thing")

    @reg.register("a")
    def make(x: int = 1):
        return x

    assert reg.create("a", x=None) == 1 and reg.create("a", x=3) == 3
    with pytest.raises(KeyError, match="expected one of: a"):
        reg.get("b")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(make)


def test_default_recipe_loads_and_overrides():
    r = load_recipe("default", ["train.epochs=3", "loss.params.beta=40", "model.dim=64"])
    assert r.train.epochs == 3 and r.loss.params["beta"] == 40 and r.model.dim == 64
    assert r.name == "default"


@pytest.mark.parametrize("override,msg", [
    ("train.epochs=x", "train.epochs must be int, got 'x'"),
    ("data.foo=1", "unknown key 'data.foo'; allowed: data.dataset"),
    ("optim.lr=[1]", "optim.lr must be float"),
    ("epochs", "override must look like key.sub=value"),
])
def test_bad_overrides_are_one_line_errors(override, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[")):
        load_recipe("default", [override])


def test_int_promotes_to_float_but_bool_is_not_int():
    r = from_dict(Recipe, apply_overrides({}, ["optim.lr=1", "train.epochs=2"]))
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float)
    with pytest.raises(ValueError, match="train.epochs must be int"):
        from_dict(Recipe, {"train": {"epochs": True}})


def test_unknown_recipe_lists_known():
    with pytest.raises(FileNotFoundError, match="known recipes: .*default"):
        load_recipe("no_such_recipe")
