//! NGSI-LD's query language (ETSI GS CIM 009, 4.9) and geo-queries (4.10), as far as Vigie
//! answers them: parsed once with bounds on every size, then evaluated on normalized entities.
//!
//! The `q` subset: `attr`, `attr[member]` (a compound value's member, nested), the comparisons
//! `==`, `!=`, `<`, `<=`, `>`, `>=` with numbers, quoted strings, `true`/`false`, date-times
//! (compared as instants when both sides are RFC 3339), value lists `a,b` and ranges `a..b` (with
//! `==`, `!=`), the patterns `~=` and `!~=`, an attribute alone (it exists), `;` (and, the
//! tighter), `|` (or) and parentheses. A value of another kind than the attribute's matches
//! nothing, `!=` included (`commune!=34172` is a number against a string: quote it). An array
//! attribute matches when one of its items does. Geo: `near;maxDistance==m` / `near;minDistance==m` around a Point, `within`,
//! `intersects` and `disjoint` with a Polygon, on the `location` GeoProperty.

use geo::{Contains, Distance, Haversine, Intersects};
use serde_json::{Map, Value};

/// Longest `q` accepted, in bytes.
pub const MAX_Q_BYTES: usize = 2_000;
/// Deepest nesting of parentheses in `q`.
const MAX_DEPTH: usize = 16;
/// Most terms in one `q`.
const MAX_TERMS: usize = 64;
/// Most vertices of a query polygon.
pub const MAX_VERTICES: usize = 1_000;
/// Largest compiled pattern (`idPattern`, `~=`), in bytes of the regex engine's program.
pub const MAX_PATTERN_PROGRAM: usize = 256 * 1024;
/// Most patterns (`~=`, `!~=`) in one `q`, so that one request compiles at most 1 MiB of them.
const MAX_PATTERNS: usize = 4;
/// Farthest `maxDistance`/`minDistance`: half the Earth's circumference, in metres.
const MAX_DISTANCE_M: f64 = 20_037_509.0;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Term(Term),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// The attribute's name, then members of its compound value (`address[addressLocality]`).
    pub path: Vec<String>,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Exists,
    Equal(Operand),
    Unequal(Operand),
    Less(Scalar),
    LessOrEqual(Scalar),
    Greater(Scalar),
    GreaterOrEqual(Scalar),
    Matches(PatternText),
    NotMatches(PatternText),
}

/// A compiled pattern (compared by its source).
#[derive(Debug, Clone)]
pub struct PatternText(pub regex::Regex);

impl PartialEq for PatternText {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    One(Scalar),
    List(Vec<Scalar>),
    Range(Scalar, Scalar),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// A pattern for `idPattern` or `~=`, bounded (the `regex` crate's matching is linear in the
/// input: no pattern can make a query slow).
pub fn pattern(source: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(source)
        .size_limit(MAX_PATTERN_PROGRAM)
        .dfa_size_limit(MAX_PATTERN_PROGRAM)
        .build()
        .map_err(|e| format!("not a usable pattern: {}", last_line(&e.to_string())))
}

/// The regex crate's error ends with its message (the lines before draw the pattern).
fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).chars().take(200).collect()
}

/// Parses `q`.
pub fn parse_q(q: &str) -> Result<Expr, String> {
    if q.len() > MAX_Q_BYTES {
        return Err(format!("q is longer than {MAX_Q_BYTES} bytes"));
    }
    let mut parser = Parser { text: q, at: 0, terms: 0, patterns: 0 };
    let expr = parser.or(0)?;
    if parser.at != q.len() {
        return Err(format!("q: unexpected {:?} at byte {}", parser.rest().chars().next().unwrap_or(' '), parser.at));
    }
    Ok(expr)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    terms: usize,
    patterns: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, String> {
        let mut any = vec![self.and(depth)?];
        while self.eat("|") {
            any.push(self.and(depth)?);
        }
        Ok(if any.len() == 1 { any.remove(0) } else { Expr::Or(any) })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, String> {
        let mut all = vec![self.factor(depth)?];
        while self.eat(";") {
            all.push(self.factor(depth)?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Expr::And(all) })
    }

    fn factor(&mut self, depth: usize) -> Result<Expr, String> {
        if self.eat("(") {
            if depth >= MAX_DEPTH {
                return Err(format!("q nests parentheses deeper than {MAX_DEPTH}"));
            }
            let inner = self.or(depth + 1)?;
            if !self.eat(")") {
                return Err(format!("q: a parenthesis opened is not closed (byte {})", self.at));
            }
            return Ok(inner);
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(format!("q has more than {MAX_TERMS} terms"));
        }
        let path = self.path()?;
        let test = self.test()?;
        Ok(Expr::Term(Term { path, test }))
    }

    /// `name` or `name[member][member]`.
    fn path(&mut self) -> Result<Vec<String>, String> {
        let name = self.name()?;
        let mut path = vec![name];
        while self.eat("[") {
            path.push(self.name()?);
            if !self.eat("]") {
                return Err(format!("q: a bracket opened is not closed (byte {})", self.at));
            }
        }
        Ok(path)
    }

    fn name(&mut self) -> Result<String, String> {
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '/' | '#' | '.' | '-' | '@')))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("q: an attribute name is expected at byte {}", self.at));
        }
        let name = self.rest()[..len].to_owned();
        // A dot outside an IRI is a sub-attribute's path (`status.observedAt`): not answered here.
        if name.contains('.') && !name.contains("://") {
            return Err(format!(
                "q: {name:?}: sub-attribute paths are not supported (a compound value's member is attr[member])"
            ));
        }
        self.at += len;
        Ok(name)
    }

    fn test(&mut self) -> Result<Test, String> {
        // Longest operators first.
        if self.eat("!~=") {
            return Ok(Test::NotMatches(self.pattern()?));
        }
        if self.eat("~=") {
            return Ok(Test::Matches(self.pattern()?));
        }
        if self.eat("==") {
            return Ok(Test::Equal(self.operand()?));
        }
        if self.eat("!=") {
            return Ok(Test::Unequal(self.operand()?));
        }
        if self.eat("<=") {
            return Ok(Test::LessOrEqual(self.scalar()?));
        }
        if self.eat(">=") {
            return Ok(Test::GreaterOrEqual(self.scalar()?));
        }
        if self.eat("<") {
            return Ok(Test::Less(self.scalar()?));
        }
        if self.eat(">") {
            return Ok(Test::Greater(self.scalar()?));
        }
        match self.rest().chars().next() {
            None | Some(';' | '|' | ')') => Ok(Test::Exists),
            Some(c) => Err(format!("q: {c:?} at byte {} is not an operator", self.at)),
        }
    }

    /// A pattern: quoted (only `\"` unescaped: a pattern's backslashes are its own), or up to the
    /// next `;`, `|` or `)`.
    fn pattern(&mut self) -> Result<PatternText, String> {
        self.patterns += 1;
        if self.patterns > MAX_PATTERNS {
            return Err(format!("q has more than {MAX_PATTERNS} patterns"));
        }
        let source = if self.rest().starts_with('"') { self.quoted(false)? } else { self.bare().to_owned() };
        Ok(PatternText(pattern(&source)?))
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let first = self.scalar()?;
        if self.eat("..") {
            return Ok(Operand::Range(first, self.scalar()?));
        }
        if self.rest().starts_with(',') {
            let mut list = vec![first];
            while self.eat(",") {
                list.push(self.scalar()?);
            }
            return Ok(Operand::List(list));
        }
        Ok(Operand::One(first))
    }

    fn scalar(&mut self) -> Result<Scalar, String> {
        if self.rest().starts_with('"') {
            return Ok(Scalar::Text(self.quoted(true)?));
        }
        // A bare value ends at a logical operator, a parenthesis, a list's comma or a range.
        let rest = self.rest();
        let mut len = rest.find([';', '|', ')', ',']).unwrap_or(rest.len());
        if let Some(range) = rest[..len].find("..") {
            len = range;
        }
        let bare = &rest[..len];
        if bare.is_empty() {
            return Err(format!("q: a value is expected at byte {}", self.at));
        }
        self.at += len;
        Ok(match bare {
            "true" => Scalar::Bool(true),
            "false" => Scalar::Bool(false),
            _ => match bare.parse::<f64>() {
                Ok(n) if n.is_finite() => Scalar::Number(n),
                // Date-times, and words a client forgot to quote.
                _ => Scalar::Text(bare.to_owned()),
            },
        })
    }

    fn bare(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest.find([';', '|', ')']).unwrap_or(rest.len());
        self.at += len;
        &rest[..len]
    }

    /// `"..."`, with `\"` escaped, and `\\` too when `unescape_all`.
    fn quoted(&mut self, unescape_all: bool) -> Result<String, String> {
        let start = self.at;
        self.at += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, escaped)) if unescape_all => out.push(escaped),
                    Some((_, escaped)) => {
                        out.push('\\');
                        out.push(escaped);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(format!("q: the string opened at byte {start} is not closed"))
    }
}

/// Renames every term's attribute (a client may name one by its IRI).
pub fn rename_attributes(expr: &mut Expr, rename: &impl Fn(&str) -> String) {
    match expr {
        Expr::And(all) | Expr::Or(all) => all.iter_mut().for_each(|e| rename_attributes(e, rename)),
        Expr::Term(term) => {
            if let Some(name) = term.path.first_mut() {
                *name = rename(name);
            }
        }
    }
}

/// Whether a normalized entity satisfies `q`. Names are the context's short terms.
pub fn satisfies(entity: &Map<String, Value>, expr: &Expr) -> bool {
    match expr {
        Expr::And(all) => all.iter().all(|e| satisfies(entity, e)),
        Expr::Or(any) => any.iter().any(|e| satisfies(entity, e)),
        Expr::Term(term) => {
            let Some(value) = attribute_value(entity, &term.path) else { return false };
            test(value, &term.test)
        }
    }
}

/// An attribute's value (a Property's `value`, a Relationship's `object`, or the value of a
/// top-level member such as `id`), then down the compound value's members.
fn attribute_value<'a>(entity: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (name, members) = path.split_first()?;
    let attribute = entity.get(name.as_str())?;
    let mut value = match attribute {
        Value::Object(a) => a.get("value").or_else(|| a.get("object"))?,
        other => other,
    };
    for member in members {
        value = value.get(member.as_str())?;
    }
    // A typed literal (`{"@type": "DateTime", "@value": ...}`) compares by its value.
    Some(value.get("@value").unwrap_or(value))
}

fn test(value: &Value, test: &Test) -> bool {
    // An array matches when one of its items does.
    if let (Value::Array(items), false) = (value, matches!(test, Test::Exists)) {
        return items.iter().any(|item| self::test(item, test));
    }
    match test {
        Test::Exists => true,
        Test::Equal(operand) => equals(value, operand),
        // Unequal: of the same kind, and not equal.
        Test::Unequal(operand) => comparable(value, operand) && !equals(value, operand),
        Test::Less(s) => compare(value, s).is_some_and(|o| o.is_lt()),
        Test::LessOrEqual(s) => compare(value, s).is_some_and(|o| o.is_le()),
        Test::Greater(s) => compare(value, s).is_some_and(|o| o.is_gt()),
        Test::GreaterOrEqual(s) => compare(value, s).is_some_and(|o| o.is_ge()),
        Test::Matches(p) => value.as_str().is_some_and(|s| p.0.is_match(s)),
        Test::NotMatches(p) => value.as_str().is_some_and(|s| !p.0.is_match(s)),
    }
}

/// Whether the value is of the operand's kind (a number for a number, ...).
fn comparable(value: &Value, operand: &Operand) -> bool {
    let first = match operand {
        Operand::One(s) | Operand::Range(s, _) => s,
        Operand::List(list) => match list.first() {
            Some(s) => s,
            None => return false,
        },
    };
    compare(value, first).is_some()
}

fn equals(value: &Value, operand: &Operand) -> bool {
    match operand {
        Operand::One(s) => compare(value, s).is_some_and(|o| o.is_eq()),
        Operand::List(list) => list.iter().any(|s| compare(value, s).is_some_and(|o| o.is_eq())),
        Operand::Range(low, high) => {
            compare(value, low).is_some_and(|o| o.is_ge()) && compare(value, high).is_some_and(|o| o.is_le())
        }
    }
}

/// Values of different kinds do not compare; two date-times compare as instants.
fn compare(value: &Value, s: &Scalar) -> Option<std::cmp::Ordering> {
    match (value, s) {
        (Value::Number(n), Scalar::Number(m)) => n.as_f64()?.partial_cmp(m),
        (Value::String(t), Scalar::Text(u)) => {
            match (chrono::DateTime::parse_from_rfc3339(t), chrono::DateTime::parse_from_rfc3339(u)) {
                (Ok(a), Ok(b)) => Some(a.cmp(&b)),
                _ => Some(t.as_str().cmp(u.as_str())),
            }
        }
        (Value::Bool(b), Scalar::Bool(c)) => Some(b.cmp(c)),
        _ => None,
    }
}

/// A geo-query on the `location` GeoProperty.
#[derive(Debug, Clone, PartialEq)]
pub enum GeoQuery {
    Near { point: geo::Point<f64>, max_m: Option<f64>, min_m: Option<f64> },
    Within(geo::Polygon<f64>),
    Intersects(geo::Polygon<f64>),
    Disjoint(geo::Polygon<f64>),
}

/// Parses `georel`, `geometry` and `coordinates` (the JSON text of GeoJSON coordinates).
pub fn parse_geo(georel: &str, geometry: &str, coordinates: &str) -> Result<GeoQuery, String> {
    let mut parts = georel.split(';');
    let relation = parts.next().unwrap_or_default();
    let modifiers: Vec<&str> = parts.collect();
    let coordinates: Value =
        serde_json::from_str(coordinates).map_err(|_| "coordinates is not a JSON array of numbers".to_owned())?;
    match relation {
        "near" => {
            if geometry != "Point" {
                return Err("georel=near needs geometry=Point".into());
            }
            let point = position(&coordinates)?;
            let (mut max_m, mut min_m) = (None, None);
            for modifier in modifiers {
                let (name, value) = modifier
                    .split_once("==")
                    .ok_or_else(|| format!("georel: {modifier:?} is not maxDistance==<m> or minDistance==<m>"))?;
                let metres: f64 = value
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && (0.0..=MAX_DISTANCE_M).contains(m))
                    .ok_or_else(|| format!("georel: {name} is a distance in metres, 0 to {MAX_DISTANCE_M}"))?;
                match name {
                    "maxDistance" => max_m = Some(metres),
                    "minDistance" => min_m = Some(metres),
                    _ => return Err(format!("georel: {name} is not maxDistance or minDistance")),
                }
            }
            if max_m.is_none() && min_m.is_none() {
                return Err("georel=near needs maxDistance==<m> or minDistance==<m>".into());
            }
            Ok(GeoQuery::Near { point, max_m, min_m })
        }
        "within" | "intersects" | "disjoint" => {
            if !modifiers.is_empty() {
                return Err(format!("georel={relation} takes no modifier"));
            }
            let polygon = match geometry {
                "Polygon" => polygon(&coordinates)?,
                _ => return Err(format!("georel={relation} is answered for geometry=Polygon")),
            };
            Ok(match relation {
                "within" => GeoQuery::Within(polygon),
                "intersects" => GeoQuery::Intersects(polygon),
                _ => GeoQuery::Disjoint(polygon),
            })
        }
        "equals" | "overlaps" | "contains" => Err(format!("georel={relation} is not supported (points only)")),
        _ => Err("georel is near, within, intersects or disjoint".into()),
    }
}

/// `[lon, lat]` in range.
fn position(value: &Value) -> Result<geo::Point<f64>, String> {
    let pair = value.as_array().filter(|a| a.len() == 2 || a.len() == 3);
    // Every member a number (one that is not makes the whole position wrong, not shorter).
    let numbers: Option<Vec<f64>> = pair.and_then(|a| a.iter().map(Value::as_f64).collect());
    match numbers.as_deref() {
        Some([lon, lat, ..]) if (-180.0..=180.0).contains(lon) && (-90.0..=90.0).contains(lat) => {
            Ok(geo::Point::new(*lon, *lat))
        }
        _ => Err("a position is [longitude, latitude], within -180..180 and -90..90".into()),
    }
}

/// A GeoJSON Polygon's coordinates: closed rings of four positions or more, the first the outline.
fn polygon(value: &Value) -> Result<geo::Polygon<f64>, String> {
    let rings = value.as_array().filter(|r| !r.is_empty()).ok_or("a Polygon's coordinates are a list of rings")?;
    let vertices: usize = rings.iter().filter_map(Value::as_array).map(Vec::len).sum();
    if vertices > MAX_VERTICES {
        return Err(format!("a polygon has at most {MAX_VERTICES} vertices"));
    }
    let mut lines = Vec::with_capacity(rings.len());
    for ring in rings {
        let points = ring.as_array().ok_or("a ring is a list of positions")?;
        let coords: Vec<geo::Coord<f64>> =
            points.iter().map(position).map(|p| p.map(|p| p.0)).collect::<Result<_, _>>()?;
        if coords.len() < 4 || coords.first() != coords.last() {
            return Err("a ring has four positions or more, the last equal to the first".into());
        }
        lines.push(geo::LineString::new(coords));
    }
    let outline = lines.remove(0);
    Ok(geo::Polygon::new(outline, lines))
}

/// Whether a position (longitude, latitude) satisfies the geo-query.
pub fn geo_matches(query: &GeoQuery, lon: f64, lat: f64) -> bool {
    let here = geo::Point::new(lon, lat);
    match query {
        GeoQuery::Near { point, max_m, min_m } => {
            let d = Haversine.distance(*point, here);
            max_m.is_none_or(|m| d <= m) && min_m.is_none_or(|m| d >= m)
        }
        GeoQuery::Within(polygon) => polygon.contains(&here),
        GeoQuery::Intersects(polygon) => polygon.intersects(&here),
        GeoQuery::Disjoint(polygon) => !polygon.intersects(&here),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity() -> Map<String, Value> {
        json!({
            "id": "urn:ngsi-ld:Streetlight:EP1",
            "type": "Streetlight",
            "status": {"type": "Property", "value": "defectiveLamp"},
            "illuminanceLevel": {"type": "Property", "value": 0.4},
            "powerState": {"type": "Property", "value": "on"},
            "dateLastSwitchingOn": {"type": "Property", "value": "2026-12-07T17:01:00Z"},
            "address": {"type": "Property", "value": {"addressLocality": "Montpellier", "postalCode": "34000"}},
            "faults": {"type": "Property", "value": ["lamp_failure", "supply_loss"]},
            "refCommune": {"type": "Relationship", "object": "urn:ngsi-ld:Commune:34172"},
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    fn holds(q: &str) -> bool {
        satisfies(&entity(), &parse_q(q).unwrap_or_else(|e| panic!("{q}: {e}")))
    }

    #[test]
    fn comparisons_lists_ranges_and_patterns() {
        assert!(holds("status==\"defectiveLamp\""));
        assert!(holds("status==defectiveLamp"));
        assert!(!holds("status==ok"));
        assert!(holds("status!=ok"));
        assert!(holds("status==ok,defectiveLamp"));
        assert!(holds("illuminanceLevel>0.3"));
        assert!(!holds("illuminanceLevel>0.4"));
        assert!(holds("illuminanceLevel>=0.4"));
        assert!(holds("illuminanceLevel==0.2..0.5"));
        assert!(!holds("illuminanceLevel==0.5..0.9"));
        assert!(holds("dateLastSwitchingOn>2026-12-07T00:00:00Z"));
        // Instants, whatever their precision or offset.
        assert!(holds("dateLastSwitchingOn>=2026-12-07T17:01:00.000000000Z"));
        assert!(holds("dateLastSwitchingOn==2026-12-07T18:01:00+01:00"));
        assert!(holds("status~=\"^defective(Lamp|Column)\\w*$\""));
        assert!(holds("address[addressLocality]==\"Montpellier\""));
        assert!(holds("faults==supply_loss"));
        assert!(holds("status~=^defective"));
        assert!(holds("status!~=^ok$"));
        assert!(holds("refCommune==\"urn:ngsi-ld:Commune:34172\""));
        assert!(holds("powerState"));
        assert!(!holds("voltage"));
        // A number does not compare with a string, for != neither.
        assert!(!holds("status>3"));
        assert!(!holds("status!=3"));
        assert!(holds("status!=\"ok\""));
        // Patterns and orders on an array: one of its items.
        assert!(holds("faults~=^supply"));
        assert!(holds("faults!=lamp_failure"));
        assert!(!holds("faults~=^relay"));
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        assert!(holds("status==ok|powerState==on;illuminanceLevel<1"));
        assert!(!holds("(status==ok|powerState==on);illuminanceLevel>1"));
        assert!(holds("(status==ok|powerState==on);illuminanceLevel<1"));
        assert_eq!(parse_q("a==1;b==2|c==3").map(|e| matches!(e, Expr::Or(ref any) if any.len() == 2)), Ok(true));
    }

    #[test]
    fn malformed_or_oversized_queries_are_refused() {
        for bad in [
            "",
            "status==",
            "==3",
            "(status==ok",
            "status==\"open",
            "status=ok",
            "status==ok)",
            "a[b==1",
            "status~=(",
            "status>1..2",
            "status.observedAt>2026-01-01T00:00:00Z",
            "a~=x;b~=x;c~=x;d~=x;e~=x",
        ] {
            assert!(parse_q(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_q(&"(".repeat(40)).is_err());
        assert!(parse_q(&vec!["a==1"; 100].join(";")).is_err());
        assert!(parse_q(&format!("a==\"{}\"", "x".repeat(MAX_Q_BYTES))).is_err());
        // A pattern whose program would be huge.
        assert!(parse_q("a~=(x{1000}){1000}").is_err());
    }

    #[test]
    fn near_within_and_disjoint() {
        let near = parse_geo("near;maxDistance==1000", "Point", "[3.8767, 43.6108]").expect("near");
        assert!(geo_matches(&near, 3.8767, 43.6150)); // about 470 m north
        assert!(!geo_matches(&near, 3.8767, 43.6250)); // about 1.6 km north
        let square = "[[[3.87,43.60],[3.89,43.60],[3.89,43.62],[3.87,43.62],[3.87,43.60]]]";
        let within = parse_geo("within", "Polygon", square).expect("within");
        assert!(geo_matches(&within, 3.88, 43.61));
        assert!(!geo_matches(&within, 3.90, 43.61));
        let disjoint = parse_geo("disjoint", "Polygon", square).expect("disjoint");
        assert!(geo_matches(&disjoint, 3.90, 43.61));
        for (georel, geometry, coordinates) in [
            ("near", "Point", "[3.8, 43.6]"),
            ("near;maxDistance==-1", "Point", "[3.8, 43.6]"),
            ("near;maxDistance==1e12", "Point", "[3.8, 43.6]"),
            ("near;maxDistance==10", "Point", "[200, 43.6]"),
            ("near;maxDistance==10", "Polygon", square),
            ("within", "Polygon", "[[[3.87,43.60],[3.89,43.60],[3.87,43.60]]]"),
            ("within", "Polygon", "[[[3.87,43.60],[3.89,43.60],[3.89,43.62],[3.87,43.61]]]"),
            ("within", "Point", "[3.8, 43.6]"),
            ("within", "Polygon", "not json"),
            ("near;maxDistance==10", "Point", "[3.8, \"x\", 43.6]"),
            ("equals", "Point", "[3.8, 43.6]"),
            ("nearby", "Point", "[3.8, 43.6]"),
        ] {
            assert!(parse_geo(georel, geometry, coordinates).is_err(), "{georel} {geometry} {coordinates}");
        }
    }
}
