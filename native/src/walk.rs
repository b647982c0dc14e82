//! The envelope every OTLP export request shares: request → Resource{Spans,Logs,Metrics}
//! (resource + scope list + schema_url) → Scope{Spans,Logs,Metrics} (scope + item list +
//! schema_url). Each signal supplies only what it does per scope and per item; the walk,
//! the resource/scope attribute caches and the per-row copies of them live here once.

use crate::cols::{markable_fields, MapCol, StrCol};
use crate::render::{push_attr, validate_kv};
use crate::wire::{utf8, Reader, Res, Val};

/// A signal's row builder, as seen by the shared request walk.
pub trait Signal {
    /// Name of the resource-level schema_url field in error messages.
    const RESOURCE_SCHEMA: &'static str;
    /// The resource attribute cache the walk fills once per Resource* message.
    fn resource_scratch(&mut self) -> &mut ResourceScratch;
    /// Decodes one Scope* message under the resource `res` (with its schema_url).
    fn scope(&mut self, buf: &[u8], res: &ResourceScratch, res_schema: &[u8]) -> Res<()>;
}

/// Decodes one export request (field 1: repeated Resource* messages), appending its rows.
#[inline]
pub fn decode_request<S: Signal>(s: &mut S, buf: &[u8]) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1, Val::Bytes(b)) = (f, v) {
            resource(s, b)?;
        }
    }
    Ok(())
}

#[inline]
fn resource<S: Signal>(s: &mut S, buf: &[u8]) -> Res<()> {
    let mut resources: Vec<&[u8]> = Vec::new();
    let mut scopes: Vec<&[u8]> = Vec::new();
    let schema_url = envelope(buf, S::RESOURCE_SCHEMA, &mut scopes, |b| {
        resources.push(b);
        Ok(())
    })?;
    with_scratch(s, S::resource_scratch, |s, scratch| {
        scratch.clear();
        for b in resources {
            scratch.add_resource(b)?;
        }
        for b in scopes {
            s.scope(b, scratch, schema_url)?;
        }
        Ok(())
    })
}

/// Reads one Resource*/Scope* message: every field 1 (resource / scope) goes to `head`,
/// every field 2 (scopes / items) into `items`; returns field 3, the schema_url (checked as
/// UTF-8, named `schema_what` in the error).
#[inline]
pub fn envelope<'a>(
    buf: &'a [u8],
    schema_what: &str,
    items: &mut Vec<&'a [u8]>,
    mut head: impl FnMut(&'a [u8]) -> Res<()>,
) -> Res<&'a [u8]> {
    let mut schema_url: &[u8] = &[];
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(b)) => head(b)?,
            (2, Val::Bytes(b)) => items.push(b),
            (3, Val::Bytes(b)) => {
                utf8(b, schema_what)?;
                schema_url = b;
            }
            _ => {}
        }
    }
    Ok(schema_url)
}

/// Runs `f` with the scratch value `slot` takes out of `owner`, then puts it back (so `f`
/// can fill columns of `owner` while reading the scratch).
#[inline]
pub fn with_scratch<O, T: Default, R>(
    owner: &mut O,
    slot: fn(&mut O) -> &mut T,
    f: impl FnOnce(&mut O, &mut T) -> R,
) -> R {
    let mut t = std::mem::take(slot(owner));
    let out = f(owner, &mut t);
    *slot(owner) = t;
    out
}

/// Resource attributes rendered once per Resource* message, copied into every row.
#[derive(Default)]
pub struct ResourceScratch {
    pub attrs: MapCol,
    pub service: Option<usize>,
}

impl ResourceScratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one `Resource` message occurrence (repeated occurrences merge: attributes append).
    pub fn add_resource(&mut self, buf: &[u8]) -> Res<()> {
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(kv)) => {
                    push_attr(kv, &mut self.attrs, 4)?;
                    let i = self.attrs.keys.len() - 1;
                    if self.service.is_none() && self.attrs.keys.value(i) == b"service.name" {
                        self.service = Some(i);
                    }
                }
                (3, Val::Bytes(er)) => validate_entity_ref(er)?,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.attrs.clear_entries();
        self.service = None;
    }

    /// Appends this resource's attributes and service name to one row.
    #[inline]
    pub fn emit(&self, attrs: &mut MapCol, service: &mut StrCol) -> Res<()> {
        attrs.push_row_from(&self.attrs)?;
        match self.service {
            Some(i) => service.push(self.attrs.vals.value(i)),
            None => service.finish(),
        }
        Ok(())
    }
}

/// Checks one EntityRef message (its strings are UTF-8).
pub fn validate_entity_ref(buf: &[u8]) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1..=4, Val::Bytes(b)) = (f, v) {
            utf8(b, "EntityRef")?;
        }
    }
    Ok(())
}

/// InstrumentationScope fields of one Scope* message (the attributes go to the map given to
/// `parse_scope`, or are only validated).
#[derive(Default)]
pub struct Scope<'a> {
    pub name: &'a [u8],
    pub version: &'a [u8],
    pub dropped: u32,
}

/// Parses one `InstrumentationScope` occurrence into `scope` (later occurrences override
/// name/version/dropped, attributes append to `attrs`).
pub fn parse_scope<'a>(
    buf: &'a [u8],
    scope: &mut Scope<'a>,
    mut attrs: Option<&mut MapCol>,
) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(b)) => {
                utf8(b, "InstrumentationScope.name")?;
                scope.name = b;
            }
            (2, Val::Bytes(b)) => {
                utf8(b, "InstrumentationScope.version")?;
                scope.version = b;
            }
            (3, Val::Bytes(kv)) => match attrs.as_deref_mut() {
                Some(m) => push_attr(kv, m, 5)?,
                None => validate_kv(kv, 5)?,
            },
            (4, Val::Varint(x)) => scope.dropped = x as u32,
            _ => {}
        }
    }
    Ok(())
}

/// Resource/scope values of one Scope* message, copied into each of its rows.
pub struct ScopeRow<'a, 'b> {
    pub res: &'b ResourceScratch,
    pub res_schema: &'a [u8],
    pub scope: Scope<'a>,
    pub scope_attrs: &'b MapCol,
    pub scope_schema: &'a [u8],
}

/// The resource/scope columns logs and metrics rows carry.
#[derive(Default)]
pub struct ScopeCols {
    pub service: StrCol,
    pub res_attrs: MapCol,
    pub res_schema: StrCol,
    pub scope_schema: StrCol,
    pub scope_name: StrCol,
    pub scope_version: StrCol,
    pub scope_attrs: MapCol,
}

markable_fields!(ScopeCols {
    service,
    res_attrs,
    res_schema,
    scope_schema,
    scope_name,
    scope_version,
    scope_attrs,
});

impl ScopeCols {
    /// Appends the resource/scope values of one row.
    #[inline]
    pub fn push(&mut self, c: &ScopeRow<'_, '_>) -> Res<()> {
        c.res.emit(&mut self.res_attrs, &mut self.service)?;
        self.res_schema.push(c.res_schema);
        self.scope_schema.push(c.scope_schema);
        self.scope_name.push(c.scope.name);
        self.scope_version.push(c.scope.version);
        self.scope_attrs.push_row_from(c.scope_attrs)
    }
}
