"""Composing Hydra configs from the packaged conf/ tree, without importing model code (used by the launcher)."""

from __future__ import annotations

CONF_MODULE = "ecomvlm.conf"


def compose(config_name: str = "vlm", overrides: list[str] | None = None):
    """Compose a config exactly as the Hydra app would (same search path, same overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
