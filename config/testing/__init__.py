"""Test and benchmark infrastructure not tied to one app, e.g. the fake OpenAI server in `fake_openai`."""
