# Fixtures shared by the unit tests beside each service and the integration tests in tests/.
pytest_plugins = ["genai_devstack.pytest_plugin"]
