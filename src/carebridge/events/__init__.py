"""Events published after a write commits."""

from carebridge.events.bus import EventBus, InProcessEventBus, ResourceChanged

__all__ = ["EventBus", "InProcessEventBus", "ResourceChanged"]
