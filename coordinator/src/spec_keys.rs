//! Every key a sweep spec accepts, read off the spec's own `Deserialize` implementations,
//! so that the list cannot drift from the parser: environment overrides are matched
//! against it, and the documentation is checked against it.
//!
//! A [`Tracer`] is a deserializer that answers whatever the derived code asks for with a
//! placeholder and records, on the way, the path of every value it was asked for and what
//! kind of value that was. (`serde-reflection` traces types the same way but refuses the
//! untagged enums `seeds` and `steps` are.)

use std::fmt::Display;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

/// What a key's value is, as the deserializer asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A string, a path or a name from a fixed set: a value from the environment stays text.
    Text,
    /// A number or a boolean.
    Number,
    /// One of several shapes (an untagged enum: `seeds` is a count or a list).
    Any,
    /// A table of arbitrary keys.
    Map,
}

/// One key: dotted from its sections (`analysis.threshold`), `[]` after an array of tables
/// (`models[].repo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecKey {
    pub name: String,
    pub kind: KeyKind,
}

/// Every key `T` accepts, in declaration order.
pub fn keys_of<'de, T: Deserialize<'de>>() -> Result<Vec<SpecKey>, TraceError> {
    let mut keys = Vec::new();
    T::deserialize(Tracer {
        path: String::new(),
        keys: Some(&mut keys),
    })?;
    Ok(keys)
}

/// The spec's types asked for something no placeholder satisfies.
#[derive(Debug, thiserror::Error)]
#[error("tracing the spec's keys: {0}")]
pub struct TraceError(String);

impl de::Error for TraceError {
    fn custom<T: Display>(message: T) -> Self {
        TraceError(message.to_string())
    }
}

/// Records the keys it is asked for into `keys`; without `keys` (inside a value already
/// recorded) it only feeds placeholders.
struct Tracer<'a> {
    path: String,
    keys: Option<&'a mut Vec<SpecKey>>,
}

impl<'a> Tracer<'a> {
    fn record(&mut self, kind: KeyKind) {
        if let Some(keys) = self.keys.as_deref_mut() {
            // A list of scalars is one key.
            let name = self.path.strip_suffix("[]").unwrap_or(&self.path);
            keys.push(SpecKey {
                name: name.to_string(),
                kind,
            });
        }
    }

    fn child(&mut self, suffix: &str) -> Tracer<'_> {
        let path = match (self.path.is_empty(), suffix.starts_with('[')) {
            (true, _) | (_, true) => format!("{}{suffix}", self.path),
            (false, false) => format!("{}.{suffix}", self.path),
        };
        Tracer {
            path,
            keys: self.keys.as_deref_mut(),
        }
    }

    fn placeholder() -> Tracer<'static> {
        Tracer {
            path: String::new(),
            keys: None,
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
            self.record(KeyKind::Number);
            visitor.visit_u64(0)
        }
    )*};
}

macro_rules! texts {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
            self.record(KeyKind::Text);
            visitor.visit_str("")
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    numbers!(deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
             deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
             deserialize_f32 deserialize_f64);
    texts!(deserialize_str deserialize_string deserialize_char deserialize_bytes
           deserialize_byte_buf deserialize_identifier);

    /// Untagged enums buffer whatever comes and try each shape: a one-element list of
    /// numbers is what `seeds` and `steps` accept.
    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        match self.keys {
            Some(_) => {
                self.record(KeyKind::Any);
                visitor.visit_seq(OneElement(Some(Tracer::placeholder())))
            }
            None => visitor.visit_u64(0),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(KeyKind::Number);
        visitor.visit_bool(false)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_seq(OneElement(Some(self.child("[]"))))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        mut self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(KeyKind::Any);
        visitor.visit_seq(OneElement(Some(Tracer::placeholder())))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(KeyKind::Map);
        visitor.visit_map(Fields {
            tracer: Tracer::placeholder(),
            fields: &[],
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_map(Fields {
            tracer: self,
            fields,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(KeyKind::Text);
        let first = variants
            .first()
            .ok_or_else(|| TraceError(format!("`{}`: an enum without variants", self.path)))?;
        visitor.visit_enum(FirstVariant(first))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }
}

/// A list holding one element.
struct OneElement<'a>(Option<Tracer<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        self.0
            .take()
            .map(|element| seed.deserialize(element))
            .transpose()
    }
}

/// A struct's fields, each traced under its name.
struct Fields<'a> {
    tracer: Tracer<'a>,
    fields: &'static [&'static str],
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        match self.fields.first() {
            Some(field) => seed.deserialize(field.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let (field, rest) = self
            .fields
            .split_first()
            .ok_or_else(|| TraceError("a value asked for after the last field".to_string()))?;
        self.fields = rest;
        seed.deserialize(self.tracer.child(field))
    }
}

/// The first variant of an enum, without a payload worth tracing.
struct FirstVariant(&'static str);

impl<'de> de::EnumAccess<'de> for FirstVariant {
    type Error = TraceError;
    type Variant = Tracer<'static>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Tracer<'static>), TraceError> {
        let variant = seed.deserialize(self.0.into_deserializer())?;
        Ok((variant, Tracer::placeholder()))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'static> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_map(Fields {
            tracer: self,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        level: u32,
        #[serde(default)]
        path: Option<PathBuf>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum CountOrList {
        Count(u32),
        List(Vec<u32>),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Outer {
        name: String,
        sizes: Vec<f64>,
        items: Vec<Inner>,
        #[serde(default)]
        inner: Option<Inner>,
        mode: Mode,
        count: CountOrList,
        labels: HashMap<String, String>,
        on: bool,
    }

    #[test]
    fn every_field_is_named_with_its_kind() {
        let keys = keys_of::<Outer>().unwrap();
        let named: Vec<(&str, KeyKind)> = keys.iter().map(|k| (k.name.as_str(), k.kind)).collect();
        assert_eq!(
            named,
            [
                ("name", KeyKind::Text),
                ("sizes", KeyKind::Number),
                ("items[].level", KeyKind::Number),
                ("items[].path", KeyKind::Text),
                ("inner.level", KeyKind::Number),
                ("inner.path", KeyKind::Text),
                ("mode", KeyKind::Text),
                ("count", KeyKind::Any),
                ("labels", KeyKind::Map),
                ("on", KeyKind::Number),
            ]
        );
    }
}
