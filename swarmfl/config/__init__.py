"""swarmfl.config: config files are data, validated at the edge into frozen sections.

* :mod:`~swarmfl.config.sections`: the sections both file formats share (``[run]``,
  ``[data]``, ``[model]``, ``[training]``, ``[gossip]``, ``[merge]``, ``[swarm]``, the link part
  of ``[radio]``), with one set of names, defaults and bounds;
* :mod:`~swarmfl.config.scenario_file`: scenario files, for ``swarmfl sim``;
* :mod:`~swarmfl.config.drone_file`: ``drone.toml``, for ``swarmfl agent``;
* :mod:`~swarmfl.config.loader`: reading a file safely (size cap, regular file, UTF-8),
  ``--set`` overrides, and one line of error naming the file and key.

Nothing inside :mod:`swarmfl.core` or :mod:`swarmfl.learning` reads config: the harnesses (the
simulator, the field agent, the CLI) pass validated values inward.
"""

from swarmfl.config.drone_file import DroneConfig, LoadedDroneConfig, load_drone_config
from swarmfl.config.scenario_file import Scenario, load_scenario

__all__ = ["DroneConfig", "LoadedDroneConfig", "Scenario", "load_drone_config", "load_scenario"]
