"""Package discovery only (metadata lives in pyproject.toml).

The repository keeps the design card's top-level folders (recipes/, conf/, data_modules/, eval/, launcher/) but
installs them under one namespace, ``ecomvlm.*``, so a generic name like ``eval`` never lands top-level in a
user's site-packages. Every folder below a root that has an ``__init__.py`` is a package.
"""

from setuptools import find_packages, setup

ROOTS = {
    "ecomvlm": "ecomvlm",
    "ecomvlm.recipes": "recipes",
    "ecomvlm.conf": "conf",
    "ecomvlm.data_modules": "data_modules",
    "ecomvlm.eval": "eval",
    "ecomvlm.launcher": "launcher",
}

packages: list[str] = []
for namespace, folder in ROOTS.items():
    packages.append(namespace)
    packages += [f"{namespace}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=ROOTS,
    package_data={"ecomvlm.conf": ["**/*.yaml"], "ecomvlm.eval": ["judge_prompts/*.yaml"],
                  "ecomvlm.data_modules.item_intel": ["prompts/*.yaml"],
                  "ecomvlm.data_modules.curation": ["prompts/*.yaml"]},
    include_package_data=True,
)
