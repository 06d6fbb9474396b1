//! Recovers the dotted path (`endpoint[1].probe.interval`) of a position in the source.
//!
//! serde reports where a problem is (a byte span) but not which setting it
//! concerns. To name the setting, the file is read a second time into a tree
//! that keeps only its shape: tables, arrays and the span of every key. The
//! path is then found by matching the problem's span against the keys.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// The shape of a TOML document.
enum Shape {
    Leaf,
    Array(Vec<Shape>),
    Table(Vec<(Spanned<String>, Shape)>),
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        Ok(Shape::Array(elements))
    }

    // A datetime also arrives as a map, whose one key has no span; reading
    // it fails, and with it the whole tree. Paths are then simply not named.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Shape::Table(entries))
    }
}

/// Every key of the document with its span and dotted path, parents before children.
fn keys(shape: &Shape, path: &str, out: &mut Vec<(Range<usize>, String)>) {
    match shape {
        Shape::Leaf => {}
        Shape::Array(elements) => {
            for (index, element) in elements.iter().enumerate() {
                keys(element, &format!("{path}[{index}]"), out);
            }
        }
        Shape::Table(entries) => {
            for (key, value) in entries {
                let name = key.get_ref();
                let bare = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let segment = if bare {
                    name.clone()
                } else {
                    format!("{name:?}")
                };
                let child = if path.is_empty() {
                    segment
                } else {
                    format!("{path}.{segment}")
                };
                out.push((key.span(), child.clone()));
                keys(value, &child, out);
            }
        }
    }
}

/// The dotted path of the setting a problem at `span` concerns, or `None`
/// when the source is not valid TOML (or the span matches nothing).
///
/// In order of preference: the key written exactly at `span` (an unknown
/// field), the first key inside `span` (a whole table of the wrong kind), or
/// the last key before `span` (a value of the wrong kind, written after its key).
pub(crate) fn field_at(source: &str, span: &Range<usize>) -> Option<String> {
    let shape: Shape = toml::from_str(source).ok()?;
    let mut all = Vec::new();
    keys(&shape, "", &mut all);

    if let Some((_, path)) = all.iter().find(|(key, _)| key == span) {
        return Some(path.clone());
    }
    if let Some((_, path)) = all
        .iter()
        .find(|(key, _)| span.start <= key.start && key.end <= span.end && key.start < span.end)
    {
        return Some(path.clone());
    }
    all.iter()
        .filter(|(key, _)| key.end <= span.start)
        .max_by_key(|(key, _)| key.end)
        .map(|(_, path)| path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_of(source: &str, needle: &str) -> Range<usize> {
        let start = source.find(needle).expect("needle in source");
        start..start + needle.len()
    }

    #[test]
    fn names_keys_in_arrays_of_tables() {
        let source =
            "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"b\"\n[[pool.backend]]\nadress = 1\n";
        let at = span_of(source, "adress");
        assert_eq!(
            field_at(source, &at).as_deref(),
            Some("pool[1].backend[0].adress")
        );
    }

    #[test]
    fn names_values_after_their_key() {
        let source = "[[endpoint]]\nname = \"a\"\nprobe = 5\n";
        let at = span_of(source, "5");
        assert_eq!(field_at(source, &at).as_deref(), Some("endpoint[0].probe"));
    }

    #[test]
    fn names_whole_tables() {
        let source = "workers = 1\n[endpoint]\nname = \"a\"\n";
        let at = span_of(source, "[endpoint]\nname = \"a\"");
        assert_eq!(field_at(source, &at).as_deref(), Some("endpoint"));
    }

    #[test]
    fn gives_up_on_invalid_toml() {
        assert_eq!(field_at("name = ", &(0..4)), None);
    }
}
