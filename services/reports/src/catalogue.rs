//! The services (kinds of report) each commune accepts: sensible French defaults, or a JSON file.

use proto::reports::{AttributeValue, ServiceAttribute, ServiceDefinition};
use std::collections::BTreeMap;
use std::path::Path;

/// The file format: services for every commune, and optional per-commune lists replacing them.
///
/// ```json
/// {"services": [{"service_code": "voirie", "service_name": "Nid-de-poule", "group": "Voirie",
///   "attributes": [{"code": "taille", "datatype": "singlevaluelist", "required": false,
///                   "description": "Taille", "values": [{"key": "petit", "name": "Petit"}]}]}],
///  "communes": {"34172": [...]}}
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    services: Vec<ServiceFile>,
    #[serde(default)]
    communes: BTreeMap<String, Vec<ServiceFile>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    service_code: String,
    service_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    attributes: Vec<AttributeFile>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributeFile {
    code: String,
    datatype: String,
    #[serde(default)]
    required: bool,
    #[serde(default = "yes")]
    variable: bool,
    description: String,
    #[serde(default)]
    datatype_description: String,
    #[serde(default)]
    values: Vec<ValueFile>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueFile {
    key: String,
    name: String,
}

const DATATYPES: [&str; 6] = ["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"];

/// The services of the territory's communes.
#[derive(Debug, Clone)]
pub struct Catalogue {
    default: Vec<ServiceDefinition>,
    per_commune: BTreeMap<String, Vec<ServiceDefinition>>,
}

fn convert(services: Vec<ServiceFile>, whose: &str) -> Result<Vec<ServiceDefinition>, String> {
    let mut out: Vec<ServiceDefinition> = Vec::new();
    for s in services {
        let code_ok = !s.service_code.is_empty()
            && s.service_code.len() <= 64
            && s.service_code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !code_ok {
            return Err(format!("{whose}: service_code {:?} must be 1 to 64 of [A-Za-z0-9_-]", s.service_code));
        }
        if out.iter().any(|o| o.service_code == s.service_code) {
            return Err(format!("{whose}: service_code {:?} appears twice", s.service_code));
        }
        let mut attributes = Vec::new();
        for (i, a) in s.attributes.into_iter().enumerate() {
            if !DATATYPES.contains(&a.datatype.as_str()) {
                return Err(format!(
                    "{whose}: service {}: attribute {}: unknown datatype {:?}",
                    s.service_code, a.code, a.datatype
                ));
            }
            let is_list = a.datatype.ends_with("valuelist");
            if is_list == a.values.is_empty() {
                return Err(format!(
                    "{whose}: service {}: attribute {}: values are for list datatypes, and required by them",
                    s.service_code, a.code
                ));
            }
            attributes.push(ServiceAttribute {
                variable: a.variable,
                code: a.code,
                datatype: a.datatype,
                required: a.required,
                datatype_description: a.datatype_description,
                order: i as u32 + 1,
                description: a.description,
                values: a.values.into_iter().map(|v| AttributeValue { key: v.key, name: v.name }).collect(),
            });
        }
        out.push(ServiceDefinition {
            service_code: s.service_code,
            service_name: s.service_name,
            description: s.description,
            metadata: !attributes.is_empty(),
            r#type: "realtime".into(),
            keywords: s.keywords,
            group: s.group,
            attributes,
        });
    }
    Ok(out)
}

fn list(code: &str, values: &[(&str, &str)], description: &str, required: bool) -> ServiceAttribute {
    ServiceAttribute {
        variable: true,
        code: code.into(),
        datatype: "singlevaluelist".into(),
        required,
        datatype_description: String::new(),
        order: 1,
        description: description.into(),
        values: values.iter().map(|(k, n)| AttributeValue { key: (*k).into(), name: (*n).into() }).collect(),
    }
}

fn service(
    code: &str,
    name: &str,
    group: &str,
    description: &str,
    attributes: Vec<ServiceAttribute>,
) -> ServiceDefinition {
    ServiceDefinition {
        service_code: code.into(),
        service_name: name.into(),
        description: description.into(),
        metadata: !attributes.is_empty(),
        r#type: "realtime".into(),
        keywords: Vec::new(),
        group: group.into(),
        attributes,
    }
}

/// The default services, in French.
pub fn defaults() -> Vec<ServiceDefinition> {
    vec![
        service(
            "voirie-nid-de-poule",
            "Nid-de-poule",
            "Voirie",
            "Chaussée ou trottoir dégradé",
            vec![list(
                "taille",
                &[("petit", "Petit"), ("moyen", "Moyen"), ("grand", "Grand (danger)")],
                "Taille du trou",
                false,
            )],
        ),
        service(
            "eclairage-panne",
            "Éclairage public en panne",
            "Éclairage",
            "Lampadaire éteint, clignotant ou allumé de jour",
            vec![ServiceAttribute {
                variable: true,
                code: "numero_candelabre".into(),
                datatype: "string".into(),
                required: false,
                datatype_description: "Le numéro inscrit sur le mât, s'il est lisible".into(),
                order: 1,
                description: "Numéro du candélabre".into(),
                values: Vec::new(),
            }],
        ),
        service(
            "proprete-depot-sauvage",
            "Dépôt sauvage",
            "Propreté",
            "Déchets abandonnés sur la voie publique",
            vec![list(
                "volume",
                &[("sac", "Un sac"), ("coffre", "Un coffre de voiture"), ("camion", "Un camion")],
                "Volume",
                true,
            )],
        ),
        service(
            "eau-fuite",
            "Fuite d'eau",
            "Eau",
            "Eau qui s'écoule de la chaussée, d'une bouche ou d'un regard",
            Vec::new(),
        ),
        service("mobilier-urbain", "Mobilier urbain dégradé", "Voirie", "Banc, potelet, barrière, abribus", Vec::new()),
        service("espaces-verts", "Espaces verts", "Espaces verts", "Arbre dangereux, pelouse, massif", Vec::new()),
        service("signalisation", "Signalisation", "Voirie", "Panneau ou feu tricolore abîmé ou masqué", Vec::new()),
    ]
}

impl Catalogue {
    pub fn with_defaults() -> Catalogue {
        Catalogue { default: defaults(), per_commune: BTreeMap::new() }
    }

    /// Reads a catalogue file; errors name the file and what is wrong.
    pub fn read(path: &Path) -> Result<Catalogue, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: CatalogueFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.display().to_string();
        let default = convert(file.services, &name)?;
        let mut per_commune = BTreeMap::new();
        for (commune, services) in file.communes {
            per_commune.insert(commune.clone(), convert(services, &format!("{name}, commune {commune}"))?);
        }
        Ok(Catalogue { default, per_commune })
    }

    /// The services of a commune.
    pub fn services(&self, commune: &str) -> &[ServiceDefinition] {
        self.per_commune.get(commune).unwrap_or(&self.default)
    }

    pub fn service(&self, commune: &str, code: &str) -> Option<&ServiceDefinition> {
        self.services(commune).iter().find(|s| s.service_code == code)
    }

    /// Whether any commune has the service (for requests that do not say their commune yet).
    pub fn knows(&self, code: &str) -> bool {
        self.default.iter().chain(self.per_commune.values().flatten()).any(|s| s.service_code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_cover_the_usual_reports() {
        let c = Catalogue::with_defaults();
        let codes: Vec<&str> = c.services("34172").iter().map(|s| s.service_code.as_str()).collect();
        assert_eq!(codes.len(), 7);
        assert!(c.service("34172", "eclairage-panne").is_some());
        assert!(c.service("34172", "proprete-depot-sauvage").unwrap().attributes[0].required);
    }

    #[test]
    fn a_catalogue_file_replaces_them_per_commune() {
        let dir = std::env::temp_dir().join(format!("vigie-catalogue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.json");
        std::fs::write(
            &path,
            r#"{"services":[{"service_code":"a","service_name":"A"}],"communes":{"21231":[{"service_code":"b","service_name":"B","attributes":[{"code":"x","datatype":"singlevaluelist","description":"X","values":[{"key":"1","name":"Un"}]}]}]}}"#,
        )
        .unwrap();
        let c = Catalogue::read(&path).unwrap();
        assert_eq!(c.services("34172")[0].service_code, "a");
        assert_eq!(c.services("21231")[0].service_code, "b");
        assert!(c.services("21231")[0].metadata);
        std::fs::write(&path, r#"{"services":[{"service_code":"a b","service_name":"A"}]}"#).unwrap();
        assert!(Catalogue::read(&path).unwrap_err().contains("service_code"));
        std::fs::write(&path, r#"{"services":[{"service_code":"a","service_name":"A","attributes":[{"code":"x","datatype":"singlevaluelist","description":"X"}]}]}"#).unwrap();
        assert!(Catalogue::read(&path).unwrap_err().contains("values"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
