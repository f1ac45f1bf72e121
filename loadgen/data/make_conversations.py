#!/usr/bin/env python3
"""Writes conversations.jsonl: weft-load's synthetic multi-turn chat set.

Deterministic (seeded); rerun after editing the banks below and commit both
files. Each line is {"id": ..., "messages": [...]}: an optional system
message, then user and assistant turns alternating, ending with an assistant
turn. The assistant turns are synthetic history, not model output: weft-load
sends one request per assistant turn, with every message before it as the
conversation so far, so each request of a conversation extends the previous
one's prompt (as a chat client does) and runs are identical on every server.
"""
import json
import random
from pathlib import Path

SYSTEMS = [
    None,
    "You are a helpful assistant. Answer clearly and concisely.",
    "You are a patient tutor who explains things step by step.",
    "You are a friendly travel and cooking expert.",
]

# topic, opening question, follow-ups
TOPICS = [
    ("photosynthesis", "How does photosynthesis work?",
     ["Why are most leaves green rather than black?", "Do plants also breathe at night?",
      "Could we build artificial leaves?"]),
    ("binary search", "Can you explain binary search with an example?",
     ["What happens if the list is not sorted?", "How many steps for a million items?",
      "Show me the idea in Python."]),
    ("sourdough", "I want to bake sourdough bread. Where do I start?",
     ["How do I know my starter is ready?", "My loaf came out flat. What went wrong?",
      "Can I use whole wheat flour?"]),
    ("the Roman Empire", "Why did the Western Roman Empire fall?",
     ["Which of those reasons mattered most?", "What happened to the Eastern half?",
      "Recommend a book on this period."]),
    ("running", "I am training for my first 10 km race. Any advice?",
     ["How many days a week should I run?", "Should I stretch before or after?",
      "What should I eat on race morning?"]),
    ("TCP", "What is the difference between TCP and UDP?",
     ["Why do video calls often use UDP?", "What is a three-way handshake?",
      "Where does QUIC fit in?"]),
    ("budgeting", "How can I start a simple monthly budget?",
     ["What is the 50/30/20 rule?", "How big should an emergency fund be?",
      "Any tips to cut grocery spending?"]),
    ("black holes", "What exactly is a black hole?",
     ["What is the event horizon?", "Can anything escape a black hole?",
      "How did astronomers take a picture of one?"]),
    ("Kyoto", "I have three days in Kyoto. What should I see?",
     ["Which temples are less crowded?", "What local food should I try?",
      "Is it easy to take a day trip to Nara?"]),
    ("git", "How do I undo my last git commit?",
     ["What is the difference between reset and revert?", "How do I recover a deleted branch?",
      "When should I rebase instead of merge?"]),
    ("vaccines", "How do vaccines train the immune system?",
     ["What are booster shots for?", "How do mRNA vaccines differ?",
      "What is herd immunity?"]),
    ("houseplants", "Which houseplants are hard to kill?",
     ["How often should I water a snake plant?", "Why are the leaves turning yellow?",
      "Do plants need fertilizer in winter?"]),
    ("chess", "I just learned how the pieces move. How do I get better at chess?",
     ["Which opening should a beginner learn?", "What is a fork?",
      "How do I avoid blundering pieces?"]),
    ("climate", "What is the difference between weather and climate?",
     ["How do scientists know past temperatures?", "What are feedback loops?",
      "What can one person do that actually helps?"]),
    ("SQL joins", "Explain SQL joins to me.",
     ["When would I use a left join?", "What does a cross join do?",
      "How can I make a slow join faster?"]),
    ("learning Spanish", "What is the best way to learn Spanish as an adult?",
     ["How do I practice speaking alone?", "Is Duolingo enough?",
      "How long until I can hold a conversation?"]),
]

OPENERS = [
    "Good question.", "Sure.", "Happy to help.", "Here is a short overview.",
    "Let me break it down.", "In short:",
]
DETAILS = [
    "The key idea about {t} is that a few simple rules explain most of what you see.",
    "Most people who start with {t} find the first step the hardest, and it gets easier.",
    "A common misconception about {t} is that it is complicated; the basics fit in a paragraph.",
    "Think of {t} as a process with an input, a transformation and an output.",
    "There are usually three things to keep in mind with {t}: preparation, practice and patience.",
    "Historically, our understanding of {t} changed a lot over the last century.",
    "If you remember one thing about {t}, make it the difference between cause and effect.",
    "Experts on {t} often disagree on the details but agree on the big picture.",
    "A small experiment is the fastest way to build an intuition for {t}.",
    "The numbers matter here: with {t}, a factor of two changes the outcome noticeably.",
]
CLOSERS = [
    "Would you like an example?", "Let me know if you want more detail.",
    "I hope that helps.", "Does that answer your question?", "",
]
FOLLOW_UP_PREFIXES = ["", "Thanks! ", "Interesting. ", "Okay, ", "Got it. "]


def reply(rng: random.Random, topic: str) -> str:
    parts = [rng.choice(OPENERS)]
    for line in rng.sample(DETAILS, rng.randint(2, 5)):
        parts.append(line.format(t=topic))
    closer = rng.choice(CLOSERS)
    if closer:
        parts.append(closer)
    return " ".join(parts)


def conversation(rng: random.Random, n: int) -> dict:
    topic, opening, follow_ups = TOPICS[n % len(TOPICS)]
    messages = []
    system = SYSTEMS[n % len(SYSTEMS)]
    if system:
        messages.append({"role": "system", "content": system})
    turns = [opening] + rng.sample(follow_ups, rng.randint(1, len(follow_ups)))
    for i, question in enumerate(turns):
        prefix = "" if i == 0 else rng.choice(FOLLOW_UP_PREFIXES)
        messages.append({"role": "user", "content": prefix + question})
        messages.append({"role": "assistant", "content": reply(rng, topic)})
    return {"id": f"conv-{n:03d}", "messages": messages}


def main() -> None:
    rng = random.Random(20261129)
    out = Path(__file__).with_name("conversations.jsonl")
    with out.open("w") as f:
        for n in range(32):
            f.write(json.dumps(conversation(rng, n)) + "\n")


if __name__ == "__main__":
    main()
