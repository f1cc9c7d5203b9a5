pytest_plugins = ["fitsflow.testing.pytest_plugin"]
