"""Where gateload finds its own files, the same way in a source checkout and in an installed package.

``gateload/analysis``, ``gateload/targets`` and ``gateload/locustfiles`` are the repository's top-level
folders (symlinks in a checkout, real folders in a wheel), so everything is found from this package's
own folder, never from the current directory. Run output is the exception: it goes under the user's
current directory (``results/``), wherever gateload is installed.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The folder holding the gateload package: the cwd for child `python -m gateload...` processes, so a
# child imports this same copy of gateload rather than whatever the user's current directory holds.
IMPORT_ROOT = PACKAGE.parent
TARGETS = PACKAGE / "targets"
PROFILES = TARGETS / "profiles"
ACCEPTANCE = TARGETS / "acceptance"
LOCUSTFILE = PACKAGE / "locustfiles" / "homeoffice.py"
# A source checkout (editable install or run in place) has pyproject.toml beside the package; an installed
# wheel does not, and then there is no git revision of gateload to record.
CHECKOUT: Path | None = IMPORT_ROOT if (IMPORT_ROOT / "pyproject.toml").is_file() else None
