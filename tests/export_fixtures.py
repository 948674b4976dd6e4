"""A fitted recipe as export sees it, for the export tests."""

import types


def fitted_recipe(model, backbone, class_names, data_source):
    """What `tftransfer.export` reads of a fitted recipe: its model, backbone,
    class names, metrics and settings (which hold the data source)."""
    return types.SimpleNamespace(
        model=model,
        backbone=backbone,
        class_names=class_names,
        metrics={"accuracy": 0.5},
        settings={"epochs": 1, "data_source": data_source},
    )
