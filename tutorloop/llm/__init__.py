"""Talking to language-model servers: the OpenAI-compatible client (client.py) and the disk
cache in front of any chat backend (cache.py). The local transformers backend lives in
tutorloop/inference/chat.py (it runs the engine); the teacher picks its backend in
tutorloop/teachers/chat.py.

May import: tutorloop.errors, tutorloop.secrets (and the `openai` SDK); nothing else of tutorloop.
"""
