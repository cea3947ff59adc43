//! The recipe's shape read from its serde derive: a deserializer that answers every request
//! of `Recipe::deserialize` with a placeholder and records what was asked for (a struct and
//! its field names, a string, an integer, an enum and its variants, an option, a list). The
//! key catalogue is built from this trace, so the schema's keys are written once, in
//! `schema.rs`.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::rc::Rc;

/// What a type asked the deserializer for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// A string.
    Str,
    /// An integer.
    UInt,
    /// A float.
    Float,
    /// A boolean.
    Bool,
    /// Whatever the value is (a hand-written `Deserialize`): its kind is named in the catalogue.
    Any,
    /// One of these names (a unit-only enum, by its serde name).
    Choice(&'static str, &'static [&'static str]),
    /// An optional value.
    Option(Box<Shape>),
    /// A fixed number of values.
    Tuple(Vec<Shape>),
    /// A list of values of one shape.
    List(Box<Shape>),
    /// A struct's fields, in declaration order.
    Struct(Vec<(&'static str, Shape)>),
    /// A map with keys of its own (e.g. a flattened free-form table).
    Map,
}

/// The shape `T`'s `Deserialize` asks for.
pub(crate) fn shape<T: de::DeserializeOwned>() -> Shape {
    let slot = Slot::default();
    if let Err(e) = T::deserialize(Probe(slot.clone())) {
        panic!("the recipe schema could not be traced: {e}");
    }
    slot.take()
}

/// Where a probe puts what it saw.
#[derive(Clone, Default)]
struct Slot(Rc<RefCell<Option<Shape>>>);

impl Slot {
    fn put(&self, shape: Shape) {
        *self.0.borrow_mut() = Some(shape);
    }

    fn take(&self) -> Shape {
        self.0.borrow_mut().take().unwrap_or(Shape::Any)
    }
}

type E = de::value::Error;

/// A deserializer that records the request and answers with a placeholder.
struct Probe(Slot);

impl<'de> IntoDeserializer<'de, E> for Probe {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::Any);
        v.visit_u64(1)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::Bool);
        v.visit_bool(false)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::UInt);
        v.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.deserialize_u64(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::Float);
        v.visit_f64(0.5)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.deserialize_f64(v)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::Str);
        v.visit_str("")
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.deserialize_string(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        let inner = Slot::default();
        let value = v.visit_some(Probe(inner.clone()))?;
        self.0.put(Shape::Option(Box::new(inner.take())));
        Ok(value)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        let items = vec![Slot::default()];
        let value = v.visit_seq(Items(items.clone().into_iter()))?;
        self.0.put(Shape::List(Box::new(items[0].take())));
        Ok(value)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, E> {
        let items: Vec<Slot> = (0..len).map(|_| Slot::default()).collect();
        let value = v.visit_seq(Items(items.clone().into_iter()))?;
        self.0.put(Shape::Tuple(items.iter().map(Slot::take).collect()));
        Ok(value)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, E> {
        let slots: Vec<Slot> = fields.iter().map(|_| Slot::default()).collect();
        let value = v.visit_map(Fields { fields: fields.iter(), slots: slots.clone().into_iter(), next: None })?;
        self.0.put(Shape::Struct(fields.iter().copied().zip(slots.iter().map(Slot::take)).collect()));
        Ok(value)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, E> {
        self.0.put(Shape::Map);
        v.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(&str, &str)>()))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, E> {
        self.0.put(Shape::Choice(name, variants));
        v.visit_enum(variants[0].into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 char bytes byte_buf unit unit_struct newtype_struct
        tuple_struct identifier ignored_any
    }
}

/// The elements of a list or tuple, each a probe.
struct Items(std::vec::IntoIter<Slot>);

impl<'de> SeqAccess<'de> for Items {
    type Error = E;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, E> {
        self.0.next().map(|slot| seed.deserialize(Probe(slot))).transpose()
    }
}

/// A struct's fields, each name followed by a probe.
struct Fields {
    fields: std::slice::Iter<'static, &'static str>,
    slots: std::vec::IntoIter<Slot>,
    next: Option<Slot>,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = E;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, E> {
        let Some(name) = self.fields.next() else { return Ok(None) };
        self.next = self.slots.next();
        seed.deserialize((*name).into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, E> {
        seed.deserialize(Probe(self.next.take().unwrap_or_default()))
    }
}
