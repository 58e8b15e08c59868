"""Model runtimes run by the agent (pure numpy), shared read-only by every sandbox on the node.

Guests reach them only through host capabilities (see :mod:`tars_agent.runtimes.services`, which
each agent owns one of): ``minilm`` (sentence embeddings), ``gpt2`` (GPT-2-architecture text
generation), ``knowledge`` (per-tenant vector stores) and ``sentiment`` (VADER on the host, for
``nn.sentiment``).
"""
