"""Plans and model prices every installation starts with. Safe to run again: existing rows are left as the
admins edited them; a price change is a new ModelPrice row with a later `effective_from`, never an update.

Plan sizing: RAG prompts are mostly input (about 9 input tokens per output token). At that ratio a paid plan's
whole quota spent on its most expensive model (gpt-4o: $2.50 in, $10 out per million) still costs less than the
plan's price: pro 6M tokens -> $19.50 of $20, team 30M -> $97.50 of $99. Cheaper models leave a wide margin.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction

from billing.models import ModelPrice, Plan

# OpenAI's public list prices (USD per 1M tokens, standard tier) and context windows, as published in 2025.
PRICES_EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)
CHAT, EMBEDDING = ModelPrice.Kind.CHAT, ModelPrice.Kind.EMBEDDING
MODEL_PRICES: list[dict] = [
    # model, kind, input, output, context window, default max_tokens
    {"model": "gpt-4o-mini", "kind": CHAT, "input": "0.15", "output": "0.60", "context": 128_000, "max": 1024},
    {"model": "gpt-4o", "kind": CHAT, "input": "2.50", "output": "10.00", "context": 128_000, "max": 1024},
    {"model": "gpt-4.1", "kind": CHAT, "input": "2.00", "output": "8.00", "context": 1_047_576, "max": 1024},
    {"model": "gpt-4.1-mini", "kind": CHAT, "input": "0.40", "output": "1.60", "context": 1_047_576, "max": 1024},
    {"model": "gpt-4.1-nano", "kind": CHAT, "input": "0.10", "output": "0.40", "context": 1_047_576, "max": 1024},
    # Reasoning models spend hidden output tokens before answering: a larger default budget.
    {"model": "o4-mini", "kind": CHAT, "input": "1.10", "output": "4.40", "context": 200_000, "max": 4096},
    {"model": "gpt-5", "kind": CHAT, "input": "1.25", "output": "10.00", "context": 400_000, "max": 4096},
    {"model": "gpt-5-mini", "kind": CHAT, "input": "0.25", "output": "2.00", "context": 400_000, "max": 4096},
    {"model": "gpt-5-nano", "kind": CHAT, "input": "0.05", "output": "0.40", "context": 400_000, "max": 4096},
    {"model": "text-embedding-3-small", "kind": EMBEDDING, "input": "0.02", "output": "0", "context": 8191,
     "max": 0},
    {"model": "text-embedding-3-large", "kind": EMBEDDING, "input": "0.13", "output": "0", "context": 8191,
     "max": 0},
    # Local models run on the operator's own hardware: no per-token price.
    {"model": "extractive", "kind": CHAT, "input": "0", "output": "0", "context": 32_768, "max": 512},
    {"model": "all-MiniLM-L6-v2", "kind": EMBEDDING, "input": "0", "output": "0", "context": 256, "max": 0},
]

_BASIC_MODELS = ["extractive", "gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano"]
_PRO_MODELS = [*_BASIC_MODELS, "gpt-4.1-mini", "gpt-5-mini", "o4-mini", "gpt-4.1", "gpt-4o", "gpt-5"]

PLANS: list[dict] = [
    {
        "slug": "free", "name": "Free", "monthly_price": Decimal("0"), "is_default": True, "sort_order": 0,
        "monthly_token_quota": 1_000_000, "requests_per_minute": 10, "tokens_per_minute": 40_000,
        "concurrent_streams": 1, "max_documents": 20, "max_storage_mb": 200, "max_file_size_mb": 10,
        "chat_models": _BASIC_MODELS,
    },
    {
        "slug": "pro", "name": "Pro", "monthly_price": Decimal("20.00"), "is_default": False, "sort_order": 1,
        "monthly_token_quota": 6_000_000, "requests_per_minute": 60, "tokens_per_minute": 200_000,
        "concurrent_streams": 4, "max_documents": 1_000, "max_storage_mb": 5_000, "max_file_size_mb": 50,
        "chat_models": _PRO_MODELS,
    },
    {
        "slug": "team", "name": "Team", "monthly_price": Decimal("99.00"), "is_default": False, "sort_order": 2,
        "monthly_token_quota": 30_000_000, "requests_per_minute": 300, "tokens_per_minute": 1_000_000,
        "concurrent_streams": 16, "max_documents": 10_000, "max_storage_mb": 50_000, "max_file_size_mb": 100,
        "chat_models": _PRO_MODELS,
    },
]


@transaction.atomic
def seed_catalog() -> list[str]:
    lines = []
    for spec in PLANS:
        defaults = {key: value for key, value in spec.items() if key != "slug"}
        # Another plan may have been made the default by an admin: never take the flag away from it.
        if defaults["is_default"] and Plan.objects.filter(is_default=True).exclude(slug=spec["slug"]).exists():
            defaults["is_default"] = False
        _, created = Plan.objects.get_or_create(slug=spec["slug"], defaults=defaults)
        lines.append(f"plan {spec['slug']}: {'created' if created else 'exists, left as is'}")
    created_prices = 0
    for spec in MODEL_PRICES:
        _, created = ModelPrice.objects.get_or_create(
            model=spec["model"],
            effective_from=PRICES_EFFECTIVE_FROM,
            defaults={
                "kind": spec["kind"],
                "input_per_million": Decimal(spec["input"]),
                "output_per_million": Decimal(spec["output"]),
                "context_window": spec["context"],
                "default_max_tokens": spec["max"],
            },
        )
        created_prices += created
    lines.append(f"model prices: {created_prices} created, {len(MODEL_PRICES) - created_prices} already there")
    return lines


def run() -> Iterator[str]:
    yield from seed_catalog()
