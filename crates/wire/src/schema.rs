//! Schema builders for fields whose bounds are named constants elsewhere (the derive takes
//! only literals): `#[schema(schema_with = ...)]` calls these, so the document carries the
//! very limits the server enforces.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::limits;

/// A string of `min..=max` characters (the server counts bytes: the bound of a field that
/// may carry non-ASCII text is its byte limit), optionally matching `pattern`.
pub(crate) fn string(min: usize, max: usize, pattern: Option<&str>) -> ObjectBuilder {
    let mut builder = ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .max_length(Some(max));
    if min > 0 {
        builder = builder.min_length(Some(min));
    }
    if let Some(pattern) = pattern {
        builder = builder.pattern(Some(pattern));
    }
    builder
}

/// The same string, or `null` (an optional field the server reads as absent).
pub(crate) fn nullable(builder: ObjectBuilder) -> ObjectBuilder {
    builder.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

/// Free text (reasons, messages, descriptions): at most [`limits::TEXT_MAX_BYTES`].
pub(crate) fn text() -> Schema {
    Schema::Object(string(0, limits::TEXT_MAX_BYTES, None).build())
}

/// Free text that must say something: not only whitespace.
pub(crate) fn required_text() -> Schema {
    Schema::Object(string(1, limits::TEXT_MAX_BYTES, Some(limits::NOT_BLANK_PATTERN)).build())
}

/// A unit name.
pub(crate) fn unit_name() -> Schema {
    Schema::Object(
        string(
            1,
            limits::UNIT_NAME_MAX_BYTES,
            Some(crate::UNIT_NAME_PATTERN),
        )
        .build(),
    )
}

/// A version hash.
pub(crate) fn hash() -> Schema {
    Schema::Object(string(64, 64, Some(crate::HASH_PATTERN)).build())
}

/// A version hash or `null`.
pub(crate) fn optional_hash() -> Schema {
    Schema::Object(nullable(string(64, 64, Some(crate::HASH_PATTERN))).build())
}

/// A label selector: key → accepted values (a node matches when it has one of them).
pub(crate) fn selector() -> Schema {
    let value = string(0, limits::LABEL_MAX_BYTES, None).build();
    let values = ArrayBuilder::new()
        .items(RefOr::T(Schema::Object(value)))
        .min_items(Some(1))
        .max_items(Some(limits::MAX_SELECTOR_VALUES));
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .property_names(Some(string(1, limits::LABEL_MAX_BYTES, None).build()))
            .additional_properties(Some(RefOr::T(Schema::Array(values.build()))))
            .max_properties(Some(limits::MAX_SELECTOR_LABELS))
            .build(),
    )
}

/// A non-negative integer up to `max`.
pub(crate) fn count(max: u64) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Integer))
            .minimum(Some(0))
            .maximum(Some(max))
            .build(),
    )
}

/// Any `u64` (an instant in ms, a sequence number, a count). No `format`: `int64` would
/// bound it at `i64::MAX`.
pub(crate) fn uint() -> Schema {
    count(u64::MAX)
}

/// An integer from `min` to `max`.
pub(crate) fn count_from(min: u64, max: u64) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Integer))
            .minimum(Some(min))
            .maximum(Some(max))
            .build(),
    )
}

/// An array of `min` to `max` of `T` (a schema of the document's components).
pub(crate) fn array_of<T: utoipa::ToSchema>(max: usize, min: usize) -> Schema {
    let mut builder = ArrayBuilder::new()
        .items(RefOr::Ref(
            utoipa::openapi::Ref::from_schema_name(T::name()),
        ))
        .max_items(Some(max));
    if min > 0 {
        builder = builder.min_items(Some(min));
    }
    Schema::Array(builder.build())
}

/// A node's labels: at most [`limits::LABELS_MAX`], keys of 1 to [`limits::LABEL_MAX_BYTES`]
/// bytes, values of at most as many.
pub(crate) fn labels() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Object))
            .property_names(Some(string(1, limits::LABEL_MAX_BYTES, None).build()))
            .additional_properties(Some(string(0, limits::LABEL_MAX_BYTES, None)))
            .max_properties(Some(limits::LABELS_MAX))
            .build(),
    )
}

/// A node id, or `null`.
pub(crate) fn optional_node_id() -> Schema {
    Schema::Object(nullable(string(1, 128, Some(crate::NODE_ID_PATTERN))).build())
}

/// An incident's components: names of 1 to [`INCIDENT_COMPONENT_MAX_BYTES`] bytes.
pub(crate) fn incident_components() -> Schema {
    use crate::requests::{INCIDENT_COMPONENT_MAX_BYTES, INCIDENT_COMPONENTS_MAX};
    let name = string(
        1,
        INCIDENT_COMPONENT_MAX_BYTES,
        Some(limits::NOT_BLANK_PATTERN),
    )
    .build();
    Schema::Array(
        ArrayBuilder::new()
            .items(RefOr::T(Schema::Object(name)))
            .max_items(Some(INCIDENT_COMPONENTS_MAX))
            .build(),
    )
}
