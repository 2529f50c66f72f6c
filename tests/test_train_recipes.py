"""Named recipes (``--recipe he2015|fast``): every row resolved, explicit options win, config.json
records it."""

from __future__ import annotations

import json

import pytest
from train_shapes import make_shapes

from convnets.cli import main
from convnets.train.optim import lr_factor
from convnets.train.options import TrainOptions
from convnets.train.recipes import FAST, HE2015, RECIPES, apply_recipe, recipe_record


def test_every_recipe_row_is_a_training_option():
    names = {f for f in TrainOptions.__dataclass_fields__}
    for recipe in RECIPES.values():
        assert set(recipe.choices) <= names, recipe.name
        TrainOptions.from_kwargs(**recipe.values())  # every value is accepted as it stands


def test_he2015_resolves_to_the_paper():
    opts = TrainOptions.from_kwargs(**apply_recipe({"recipe": "he2015"}))
    assert (opts.optimizer, opts.lr, opts.momentum, opts.nesterov) == ("sgd", 0.1, 0.9, False)
    assert (opts.weight_decay, opts.batch_size, opts.epochs) == (1e-4, 128, 164)
    assert (opts.augment, opts.normalize, opts.val_split, opts.resize) == (
        "crop:4,hflip",
        "mean",
        0.1,
        "resize",
    )
    # the paper's arithmetic was fp32; auto trains bf16 where the CPU has it, measured as accurate
    assert opts.schedule == "step" and opts.precision == "auto" and opts.label_smoothing == 0
    # /10 at 32k and 48k of 64k iterations: 50% and 75% of the run, whatever --epochs is
    total = 64_000
    assert lr_factor("step", 31_999, total, 0) == 1.0 and lr_factor(
        "step", 32_000, total, 0
    ) == pytest.approx(0.1)
    assert lr_factor("step", 48_000, total, 0) == pytest.approx(0.01)


def test_fast_resolves_to_its_table():
    opts = TrainOptions.from_kwargs(**apply_recipe({"recipe": "fast"}))
    assert (opts.schedule, opts.label_smoothing, opts.nesterov, opts.channels_last) == (
        "onecycle",
        0.1,
        True,
        True,
    )
    assert (
        opts.batch_size == 256
        and opts.lr == pytest.approx(0.1 * 256 / 128)
        and opts.epochs == FAST.choices["epochs"].value
    )


def test_explicit_options_override_the_recipe():
    given = {"recipe": "he2015", "epochs": 40, "lr": 0.05, "batch_size": None}
    opts = TrainOptions.from_kwargs(**apply_recipe(given))
    assert opts.epochs == 40 and opts.lr == 0.05 and opts.batch_size == 128
    record = recipe_record("he2015", opts.to_dict())
    assert record["overridden"] == {
        "epochs": {"recipe": 164, "used": 40},
        "lr": {"recipe": 0.1, "used": 0.05},
    }
    assert record["values"]["weight_decay"] == HE2015.choices["weight_decay"].value


def test_unknown_recipe_is_refused_naming_the_option(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "digits", "--model", "lenet5", "--recipe", "nope", "--out", str(tmp_path / "r")])
    assert "--recipe" in capsys.readouterr().err


def test_cli_run_records_the_recipe_and_its_resolved_values(tmp_path, one_thread):
    data = make_shapes(tmp_path / "shapes", per_class=20)
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            str(data),
            "--model",
            "resnet20",
            "--recipe",
            "he2015",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--image-size",
            "16",
            "--workers",
            "0",
            "--quiet",
            "--out",
            str(run),
        ]
    )
    assert rc == 0
    config = json.loads((run / "config.json").read_text())
    options = config["options"]
    assert options["recipe"] == "he2015" and options["val_split"] == 0.1 and options["weight_decay"] == 1e-4
    assert (
        options["augment"] == "crop:4,hflip" and options["nesterov"] is False and options["batch_size"] == 16
    )
    assert config["resize"] == "resize" and config["std"] == [1.0, 1.0, 1.0]  # mean subtraction only
    assert config["recipe"]["name"] == "he2015"
    assert set(config["recipe"]["overridden"]) == {"epochs", "batch_size"}
    assert config["split"]["n_val"] == 6  # 10% of 60


def test_fast_recipe_trains_and_resumes_with_its_recipe_named(tmp_path, one_thread):
    from convnets.train import train

    data = make_shapes(tmp_path / "shapes", per_class=16, size=16)
    run = tmp_path / "run"
    train(
        str(data),
        model="cifar_resnet",
        model_kwargs={"depth": 8},
        out=run,
        recipe="fast",
        epochs=1,
        batch_size=16,
        image_size=16,
        workers=0,
        quiet=True,
    )
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["schedule"] == "onecycle" and config["options"]["label_smoothing"] == 0.1
    assert config["options"]["channels_last"] is True and config["recipe"]["name"] == "fast"
    # naming the recipe again on --resume is fine; its values do not replace the run's saved options
    result = train(None, out=run, recipe="fast", resume=True, epochs=2, workers=0, quiet=True)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert json.loads((run / "config.json").read_text())["options"]["batch_size"] == 16


def test_recipes_resize_values_are_the_data_layers():
    from convnets.data.decode import resize_mode
    from convnets.train.recipes import RECIPES

    for recipe in RECIPES.values():
        resize_mode(recipe.choices["resize"].value)  # raises ValueError for a name the loader lacks
