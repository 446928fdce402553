"""Remote control over MQTT (docs/mqtt.md): `config/set` -> `config/response`,
`cmd/<name>` -> `cmd/<name>/response`, and the retained `config/state`.

- `router.py`: `Control`, the handler table keyed by topic suffix, parsing and bounds, the
  one response builder, the worker thread and the replies.
- `settings.py`: `Settings`, `config/set`, `cmd/forget`, the SIGHUP reload, the version in
  force and `config/state`.
- `patching.py`: pure functions: what is settable, a patch merged onto the config and
  validated, the paths it changed.
- `store.py`: `StateStore`, the state directory (remote config, version floor, bundles).
- `bundles.py`: `BundleUpload`, `cmd/bundle`: chunks, archive checks and unpacking, the swap.

Refusals are `agent.errors.RequestError`, a list of (path, message) pairs.
"""

from agent.control.bundles import BundleUpload, unpack_bundle
from agent.control.patching import apply_patch, changed_paths, merge, settable_view
from agent.control.router import Control, Route, response
from agent.control.settings import Settings
from agent.control.store import StateStore
from agent.errors import Errors, RequestError

__all__ = ["BundleUpload", "Control", "Errors", "RequestError", "Route", "Settings",
           "StateStore", "apply_patch", "changed_paths", "merge", "response", "settable_view",
           "unpack_bundle"]
