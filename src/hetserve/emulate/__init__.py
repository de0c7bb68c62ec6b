"""An engine emulator behind the OpenAI API: the simulator's engine stepping in real time, so
that a gateway, a profiler or an autoscaler runs and is tested on a laptop without a GPU."""

from hetserve.emulate.engine import EmulatedEngine
from hetserve.emulate.server import Emulator, ReplicaServer, group_emulator

__all__ = ["EmulatedEngine", "Emulator", "ReplicaServer", "group_emulator"]
