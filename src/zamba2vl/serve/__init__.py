"""An OpenAI-compatible HTTP server for Zamba2-VL with continuous batching and a chat page (``zamba2vl serve``).

Needs the ``serve`` extra (starlette, uvicorn, pydantic; httpx for remote images)."""
