//! Topic exchange: a trie over the words of the binding keys.
//!
//! Binding keys and routing keys are split on "."; the empty key has no words (as in
//! RabbitMQ), "a..b" has an empty middle word, which `*` matches. `*` matches exactly one
//! word and `#` zero or more. Matching walks the trie once per routing key, so its cost
//! depends on the key and on how many patterns share prefixes, not on the number of bindings;
//! only `#` branches explore more than one path. Paths can meet only below a second `#`, so
//! the walk remembers the states it has been in there: a key like `#.#.#.#.#.#.#.#.x` costs
//! polynomial time in the routing key's words, not exponential. No allocation while routing
//! unless a binding key has two `#`.

use std::collections::{HashMap, HashSet};

use lockgate_wire::FieldTable;

use super::{BindingEntry, Destination};

#[derive(Debug, Default)]
pub(crate) struct TopicRouter {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    words: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// Bindings whose key ends at this node.
    bindings: Vec<BindingEntry>,
}

/// The first word of `rest` and what follows it. `None` means no words are left.
fn split_first(rest: &str) -> (&str, Option<&str>) {
    match rest.find('.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    }
}

fn words(key: &str) -> Option<&str> {
    if key.is_empty() {
        None
    } else {
        Some(key)
    }
}

impl TopicRouter {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn add(&mut self, entry: BindingEntry) -> bool {
        let mut node = &mut self.root;
        let mut rest = words(&entry.routing_key);
        while let Some(remaining) = rest {
            let (word, next) = split_first(remaining);
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                _ => node.words.entry(word.into()).or_default(),
            };
            rest = next;
        }
        if node.bindings.iter().any(|b| b.same(&entry)) {
            return false;
        }
        node.bindings.push(entry);
        self.len += 1;
        true
    }

    pub fn remove(&mut self, key: &str, arguments: &FieldTable, destination: &Destination) -> bool {
        let removed = self.root.remove(words(key), key, arguments, destination);
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn route(&self, routing_key: &str, f: &mut impl FnMut(&Destination)) {
        let mut walk = Walk {
            f,
            hashes: 0,
            seen: None,
        };
        self.root.matches(words(routing_key), &mut walk);
    }

    pub fn take_all(&mut self) -> Vec<BindingEntry> {
        let mut out = Vec::with_capacity(self.len);
        std::mem::take(&mut self.root).drain_into(&mut out);
        self.len = 0;
        out
    }
}

/// One routing key's walk through the trie.
struct Walk<'f, F> {
    f: &'f mut F,
    /// How many `#` nodes the walk is below.
    hashes: usize,
    /// The `#` states (node, words left) walked below another `#`: only there can two paths
    /// reach the same state.
    seen: Option<HashSet<(usize, usize)>>,
}

impl<F: FnMut(&Destination)> Walk<'_, F> {
    /// Walks from `hash` (a `#` node) with `rest` left, unless that was done already.
    fn expand(&mut self, hash: &Node, rest: Option<&str>) {
        if self.hashes > 0 {
            // `None` (no words left) and `Some("")` (one empty word) are different states.
            let state = (
                std::ptr::from_ref(hash) as usize,
                rest.map_or(0, |s| s.len() + 1),
            );
            if !self.seen.get_or_insert_with(HashSet::new).insert(state) {
                return;
            }
        }
        self.hashes += 1;
        hash.matches(rest, self);
        self.hashes -= 1;
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn matches<F: FnMut(&Destination)>(&self, rest: Option<&str>, walk: &mut Walk<'_, F>) {
        match rest {
            None => {
                for binding in &self.bindings {
                    (walk.f)(&binding.destination);
                }
                // A trailing '#' matches zero words.
                if let Some(hash) = &self.hash {
                    walk.expand(hash, None);
                }
            }
            Some(remaining) => {
                let (word, next) = split_first(remaining);
                if let Some(child) = self.words.get(word) {
                    child.matches(next, walk);
                }
                if let Some(star) = &self.star {
                    star.matches(next, walk);
                }
                if let Some(hash) = &self.hash {
                    // '#' swallows zero, one, ... or all of the remaining words.
                    let mut suffix = Some(remaining);
                    loop {
                        walk.expand(hash, suffix);
                        match suffix {
                            Some(s) => suffix = split_first(s).1,
                            None => break,
                        }
                    }
                }
            }
        }
    }

    fn remove(
        &mut self,
        rest: Option<&str>,
        key: &str,
        arguments: &FieldTable,
        destination: &Destination,
    ) -> bool {
        let Some(remaining) = rest else {
            let before = self.bindings.len();
            self.bindings.retain(|b| {
                !(b.routing_key == key
                    && &b.arguments == arguments
                    && &b.destination == destination)
            });
            return self.bindings.len() != before;
        };
        let (word, next) = split_first(remaining);
        match word {
            "*" => Self::remove_boxed(&mut self.star, next, key, arguments, destination),
            "#" => Self::remove_boxed(&mut self.hash, next, key, arguments, destination),
            _ => {
                let Some(child) = self.words.get_mut(word) else {
                    return false;
                };
                let removed = child.remove(next, key, arguments, destination);
                if child.is_empty() {
                    self.words.remove(word);
                }
                removed
            }
        }
    }

    fn remove_boxed(
        slot: &mut Option<Box<Node>>,
        rest: Option<&str>,
        key: &str,
        arguments: &FieldTable,
        destination: &Destination,
    ) -> bool {
        let Some(child) = slot else {
            return false;
        };
        let removed = child.remove(rest, key, arguments, destination);
        if child.is_empty() {
            *slot = None;
        }
        removed
    }

    fn drain_into(self, out: &mut Vec<BindingEntry>) {
        out.extend(self.bindings);
        for (_, child) in self.words {
            child.drain_into(out);
        }
        if let Some(star) = self.star {
            star.drain_into(out);
        }
        if let Some(hash) = self.hash {
            hash.drain_into(out);
        }
    }
}
