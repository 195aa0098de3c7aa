import os

# The suite tests alertmail, not whatever alertmail plugins happen to be installed in its
# venv: no entry-point plugin loads, here or in the agents and commands the tests start
# (they inherit the environment). A test that needs one names it, or removes the variable.
# Set it yourself to run the suite with some installed plugins loaded.
os.environ.setdefault("ALERTMAIL_LOAD_PLUGINS", "")

pytest_plugins = ["tests.peers"]
