"""Chat test data: users on a roomy plan with priced models, and ready documents with real embeddings."""

from __future__ import annotations

from decimal import Decimal

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import ModelPrice
from billing.tests.factories import ModelPriceFactory, PlanFactory, subscribe
from documents.benchmarking.common import document_from_texts as document_with_chunks

# A model with a tiny context window, for the tests that need the prompt budget to bite.
SMALL_MODEL = "gpt-4o-mini-small"


def model_prices() -> None:
    ModelPriceFactory(model="gpt-4o-mini")
    ModelPriceFactory(model="extractive", input_per_million=Decimal(0), output_per_million=Decimal(0),
                      context_window=32_768, default_max_tokens=512)
    ModelPriceFactory(model=SMALL_MODEL, context_window=1_200, default_max_tokens=100)


def chat_user(**plan_fields) -> User:
    """A user whose plan allows the test models, with limits that only the limit tests reach."""
    user = UserFactory()
    plan = PlanFactory(chat_models=["gpt-4o-mini", "extractive", SMALL_MODEL], **plan_fields)
    subscribe(user=user, plan=plan)
    return user


__all__ = ["SMALL_MODEL", "ModelPrice", "chat_user", "document_with_chunks", "model_prices"]
