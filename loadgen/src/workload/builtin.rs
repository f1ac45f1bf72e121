//! The built-in dataset: a dozen English prompts (roughly 20 to 80 tokens
//! each).

use super::Item;
use crate::target::Prompt;

/// The built-in prompts, varied in topic, style and length.
pub const PROMPTS: &[&str] = &[
    "Write a short story about a lighthouse keeper who finds a message in a \
     bottle washed up on the rocks.",
    "Explain, in simple terms that a ten-year-old could follow, why the sky looks blue \
     during the day but turns red and orange at sunset.",
    "List five practical tips for someone who wants to start running in the morning \
     but finds it hard to get out of bed.",
    "Summarize the main causes of the French Revolution, focusing on the economic \
     situation of the country, the role of the nobility, and the influence of \
     Enlightenment ideas on ordinary citizens.",
    "What is the difference between a list and a tuple in Python, and when should I \
     prefer one over the other?",
    "Describe a busy market in a small coastal town early on a Saturday morning: the \
     sounds, the smells, the people arriving with their carts, and the fishermen \
     bringing in the night's catch.",
    "Compose a friendly email to a colleague asking to move our Thursday meeting to \
     Friday afternoon because of a scheduling conflict.",
    "Give me a recipe for a simple vegetable soup that uses carrots, potatoes, onions \
     and whatever herbs are usually found in a kitchen cupboard.",
    "Translate the following sentence into French and explain the grammar: The children \
     were playing in the garden when it started to rain.",
    "Imagine you are a tour guide in ancient Rome. Welcome a group of visitors, tell \
     them what they will see today, from the Forum to the Colosseum, and warn them \
     about the crowds and the heat of the summer afternoon.",
    "Why do cats purr, and is it always a sign that they are happy and relaxed? Answer briefly.",
    "A farmer has a field shaped like a rectangle, 120 meters long and 80 meters wide. \
     He wants to build a fence around it and plant trees every 4 meters along the \
     fence. How many trees does he need? Explain your reasoning step by step.",
];

/// The built-in prompts as workload items (no expectations).
pub fn items() -> Vec<Item> {
    PROMPTS
        .iter()
        .map(|p| Item::new(Prompt::Text((*p).to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_set_is_a_dozen_of_varied_length() {
        assert_eq!(PROMPTS.len(), 12);
        // About 0.75 words a token: 20..80 tokens is roughly 8..65 words.
        for p in PROMPTS {
            let words = p.split_whitespace().count();
            assert!((12..=65).contains(&words), "{words} words: {p}");
        }
    }
}
