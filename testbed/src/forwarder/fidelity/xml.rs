//! A small XML tree for EC2 query-protocol answers: the model has to read
//! instance ids out of moto's answers and rewrite them (drop items, replace
//! an instance's state, splice a fleet `errorSet`) without losing anything
//! else the SDK parses, so text and attributes are kept as raw, escaped text.

use xmlparser::{ElementEnd, Token, Tokenizer};

/// One node of the tree: an element or raw (still escaped) character data.
#[derive(Clone, Debug)]
pub(in crate::forwarder) enum Node {
    Element(Element),
    Text(String),
}

/// An element with its qualified name, its attributes as written, and its
/// children in order.
#[derive(Clone, Debug)]
pub(in crate::forwarder) struct Element {
    pub(in crate::forwarder) name: String,
    attrs: String,
    pub(in crate::forwarder) children: Vec<Node>,
}

/// A parsed document: the prolog as written and the root element.
#[derive(Clone, Debug)]
pub(in crate::forwarder) struct Document {
    prolog: String,
    pub(in crate::forwarder) root: Element,
}

impl Document {
    /// A new document around `root`, with EC2's XML declaration.
    pub(in crate::forwarder) fn new(root: Element) -> Document {
        Document {
            prolog: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>".to_string(),
            root,
        }
    }

    /// Parses `text`; `None` when it is not one well-formed element tree.
    pub(in crate::forwarder) fn parse(text: &str) -> Option<Document> {
        let mut prolog = String::new();
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        for token in Tokenizer::from(text) {
            match token.ok()? {
                Token::Declaration { span, .. } => {
                    prolog = span.as_str().to_string();
                }
                Token::ElementStart { prefix, local, .. } => {
                    let name = if prefix.is_empty() {
                        local.as_str().to_string()
                    } else {
                        format!("{}:{}", prefix.as_str(), local.as_str())
                    };
                    stack.push(Element::new(name));
                }
                Token::Attribute { span, .. } => {
                    let element = stack.last_mut()?;
                    element.attrs.push(' ');
                    element.attrs.push_str(span.as_str());
                }
                Token::ElementEnd { end, .. } => match end {
                    ElementEnd::Open => {}
                    ElementEnd::Empty | ElementEnd::Close(..) => {
                        let done = stack.pop()?;
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(Node::Element(done)),
                            None => root = Some(done),
                        }
                    }
                },
                Token::Text { text } => {
                    if let Some(element) = stack.last_mut() {
                        element.children.push(Node::Text(text.as_str().to_string()));
                    }
                }
                Token::Cdata { text, .. } => {
                    if let Some(element) = stack.last_mut() {
                        element.children.push(Node::Text(escape(text.as_str())));
                    }
                }
                _ => {}
            }
        }
        Some(Document {
            prolog,
            root: root?,
        })
    }

    /// The document as text again.
    pub(in crate::forwarder) fn render(&self) -> String {
        let mut out = String::new();
        if !self.prolog.is_empty() {
            out.push_str(&self.prolog);
            out.push('\n');
        }
        self.root.render_into(&mut out);
        out
    }
}

impl Element {
    /// An element without attributes or children.
    pub(in crate::forwarder) fn new(name: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            attrs: String::new(),
            children: Vec::new(),
        }
    }

    /// An element holding only `text` (escaped here).
    pub(in crate::forwarder) fn with_text(name: impl Into<String>, text: &str) -> Element {
        let mut element = Element::new(name);
        element.children.push(Node::Text(escape(text)));
        element
    }

    /// Adds an attribute (builder style); `value` is escaped here.
    pub(in crate::forwarder) fn attr(mut self, name: &str, value: &str) -> Element {
        self.attrs
            .push_str(&format!(" {name}=\"{}\"", escape(value)));
        self
    }

    /// Adds a child element (builder style).
    pub(in crate::forwarder) fn child_element(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    /// The first child element named `name`.
    pub(in crate::forwarder) fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The first child element named `name`, to change it.
    pub(in crate::forwarder) fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.name == name => Some(e),
            _ => None,
        })
    }

    /// The child elements, in order.
    pub(in crate::forwarder) fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The child elements, in order, to change them.
    pub(in crate::forwarder) fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Keeps the child elements for which `keep` is true (text stays).
    pub(in crate::forwarder) fn retain_elements(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Orders the child elements by `key` (stable). Meant for a list element
    /// such as an `…Set` of `item`s: text between them (whitespace) is dropped.
    pub(in crate::forwarder) fn sort_elements_by_key<K: Ord>(
        &mut self,
        mut key: impl FnMut(&Element) -> K,
    ) {
        let mut keyed: Vec<(K, Node)> = std::mem::take(&mut self.children)
            .into_iter()
            .filter_map(|n| match n {
                Node::Element(e) => Some((key(&e), Node::Element(e))),
                Node::Text(_) => None,
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        self.children = keyed.into_iter().map(|(_, n)| n).collect();
    }

    /// Replaces the first child named like `child`, or appends it.
    pub(in crate::forwarder) fn set_child(&mut self, child: Element) {
        match self.child_mut(&child.name) {
            Some(existing) => *existing = child,
            None => self.children.push(Node::Element(child)),
        }
    }

    /// The element's character data, unescaped.
    pub(in crate::forwarder) fn text(&self) -> String {
        let raw: String = self
            .children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect();
        unescape(raw.trim())
    }

    /// The text of the child at `path` (`["instanceState", "name"]`).
    pub(in crate::forwarder) fn text_at(&self, path: &[&str]) -> Option<String> {
        let mut at = self;
        for name in path {
            at = at.child(name)?;
        }
        Some(at.text())
    }

    fn render_into(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        out.push_str(&self.attrs);
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.render_into(out),
                Node::Text(t) => out.push_str(t),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

/// Escapes character data for an element's text (and for the forwarder's
/// own error bodies).
pub(in crate::forwarder) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edits_and_renders_what_it_does_not_touch_unchanged() {
        let text = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<R xmlns=\"x\"><a>1 &amp; 2</a>\
                    <set><item><id>i-1</id></item><item><id>i-2</id></item></set><e/></R>";
        let mut doc = Document::parse(text).expect("parses");
        assert_eq!(doc.render(), text);
        assert_eq!(doc.root.text_at(&["a"]).as_deref(), Some("1 & 2"));
        let set = doc.root.child_mut("set").expect("set");
        set.retain_elements(|item| item.text_at(&["id"]).as_deref() != Some("i-1"));
        doc.root.set_child(Element::with_text("a", "<x>"));
        assert_eq!(
            doc.render(),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<R xmlns=\"x\"><a>&lt;x&gt;</a>\
             <set><item><id>i-2</id></item></set><e/></R>"
        );
        assert!(Document::parse("<a><b></a>").is_none());
    }
}
