"""Routing: what a request needs, and which backends can serve it (pure functions)."""

from nexus_trio.routing.requirements import ChatRequest, Requirements
from nexus_trio.routing.router import Candidate, RouteDecision, nearest_models, plan_route, rank

__all__ = [
    "Candidate",
    "ChatRequest",
    "Requirements",
    "RouteDecision",
    "nearest_models",
    "plan_route",
    "rank",
]
