"""Hub repos as sources and targets: download what a conversion needs, inspect from headers, publish.

Everything talks to the Hub through huggingface_hub, imported only when a Hub repo is used.
"""

from .card import CardFacts, render_card
from .fetch import HubSource, hub_checkout, is_repo_id
from .push import PushReport, push
from .remote import inspect_remote

__all__ = ["CardFacts", "HubSource", "PushReport", "hub_checkout", "inspect_remote", "is_repo_id", "push", "render_card"]
