"""StableAvatar: audio-driven infinite-length talking-avatar video on Wan2.1-Fun-1.3B-InP."""

__version__ = "0.1.0"
