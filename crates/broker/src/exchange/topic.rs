//! Topic exchange: a trie over the words of the binding keys.
//!
//! Binding keys and routing keys are split on "."; the empty key has no words (as in
//! RabbitMQ), "a..b" has an empty middle word, which `*` matches. `*` matches exactly one
//! word and `#` zero or more. Matching walks the trie once per routing key, so its cost
//! depends on the key and on how many patterns share prefixes, not on the number of bindings;
//! only `#` branches explore more than one path. No allocation while routing.

use std::collections::HashMap;

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
        self.root.matches(words(routing_key), f);
    }

    pub fn take_all(&mut self) -> Vec<BindingEntry> {
        let mut out = Vec::with_capacity(self.len);
        std::mem::take(&mut self.root).drain_into(&mut out);
        self.len = 0;
        out
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.bindings.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn matches(&self, rest: Option<&str>, f: &mut impl FnMut(&Destination)) {
        match rest {
            None => {
                for binding in &self.bindings {
                    f(&binding.destination);
                }
                // A trailing '#' matches zero words.
                if let Some(hash) = &self.hash {
                    hash.matches(None, f);
                }
            }
            Some(remaining) => {
                let (word, next) = split_first(remaining);
                if let Some(child) = self.words.get(word) {
                    child.matches(next, f);
                }
                if let Some(star) = &self.star {
                    star.matches(next, f);
                }
                if let Some(hash) = &self.hash {
                    // '#' swallows zero, one, ... or all of the remaining words.
                    let mut suffix = Some(remaining);
                    loop {
                        hash.matches(suffix, f);
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
