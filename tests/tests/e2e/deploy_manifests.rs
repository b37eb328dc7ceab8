//! The Kubernetes manifests (deploy/k8s/): each overlay renders with `kubectl kustomize` and
//! validates against the Kubernetes schemas offline (kubernetes-validate, strict: an unknown field
//! is an error), and says what the deployment needs (the cluster's three NATS nodes, every
//! process given their URLs, streams with 3 replicas; the bus's permissions from the one file).

use anyhow::{Context, Result, bail};
use std::process::Command;
use tests::repo_root;

/// What the CI machines' kubectl validates against.
const KUBERNETES_VERSION: &str = "1.32.0";

fn render(overlay: &str) -> Result<Option<String>> {
    let output =
        match Command::new("kubectl").arg("kustomize").arg(repo_root().join("deploy/k8s").join(overlay)).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("running kubectl kustomize"),
        };
    if !output.status.success() {
        bail!("kubectl kustomize deploy/k8s/{overlay} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(Some(String::from_utf8(output.stdout)?))
}

fn validate(overlay: &str, rendered: &str) -> Result<()> {
    let validator = repo_root().join(".tools/venv/bin/kubernetes-validate");
    anyhow::ensure!(validator.is_file(), "no {} (deploy/install-tools.sh --browser installs it)", validator.display());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(format!("{overlay}.yaml"));
    std::fs::write(&file, rendered)?;
    let output = Command::new(&validator)
        .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .context("running kubernetes-validate")?;
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(
        output.status.success() && !said.contains("ERROR"),
        "deploy/k8s/{overlay} does not validate:\n{said}"
    );
    Ok(())
}

/// The rendered gateway Deployment.
fn gateway(rendered: &str) -> Option<&str> {
    rendered
        .split("\n---\n")
        .find(|doc| doc.starts_with("apiVersion: apps/v1\nkind: Deployment\n") && doc.contains("\n  name: gateway\n"))
}

#[test]
fn the_kubernetes_overlays_render_and_validate() -> Result<()> {
    let Some(single) = render("single-node")? else {
        eprintln!(
            "NOTE the_kubernetes_overlays_render_and_validate: kubectl is absent here; the manifests are not checked"
        );
        return Ok(());
    };
    let cluster = render("cluster")?.context("kubectl vanished")?;
    validate("single-node", &single)?;
    validate("cluster", &cluster)?;

    // Every object, each overlay: the NATS StatefulSet, the four services and the gateway, their
    // Services, the policies.
    for (overlay, rendered) in [("single-node", &single), ("cluster", &cluster)] {
        for name in ["nats", "lighting", "transport", "water", "reports"] {
            anyhow::ensure!(
                rendered.contains(&format!(
                    "kind: StatefulSet\nmetadata:\n  labels:\n    app.kubernetes.io/part-of: vigie\n  name: {name}\n"
                )),
                "{overlay}: no StatefulSet {name}"
            );
        }
        // The gateway's replicas are interchangeable (the access directory is shared).
        anyhow::ensure!(gateway(rendered).is_some(), "{overlay}: no Deployment gateway");
        anyhow::ensure!(rendered.matches("kind: NetworkPolicy").count() >= 5, "{overlay}: its network policies");
        // NATS's users and permissions are the single machine's file, as it is.
        let authorization = std::fs::read_to_string(repo_root().join("deploy/nats/authorization.conf"))?;
        let first_rule = authorization.lines().find(|l| l.contains("user: lighting")).context("the lighting user")?;
        anyhow::ensure!(
            rendered.contains(first_rule.trim()),
            "{overlay}: NATS's permissions are not deploy/nats/authorization.conf's"
        );
    }
    // One node, one copy; three nodes, three copies, and every process given the three URLs.
    assert!(single.contains("VIGIE_STREAM_REPLICAS: \"1\""), "single-node: streams with 1 replica");
    assert!(!single.contains("nats-route://"), "single-node: no routes");
    assert!(cluster.contains("VIGIE_STREAM_REPLICAS: \"3\""), "cluster: streams with 3 replicas");
    assert!(
        cluster.contains("VIGIE_NATS_URL: nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222"),
        "cluster: every node's URL"
    );
    for node in 0..3 {
        assert!(cluster.contains(&format!("nats-route://nats-{node}.nats:6222")), "cluster: a route to nats-{node}");
    }
    for (name, available) in [("nats", 2), ("gateway", 1)] {
        assert!(
            cluster.contains(&format!("  name: {name}\n  namespace: vigie\nspec:\n  minAvailable: {available}\n")),
            "cluster: a disruption budget for {name}, in the deployment's namespace"
        );
    }
    fn replicas(rendered: &str) -> Option<&str> {
        gateway(rendered)?.lines().find(|l| l.trim().starts_with("replicas:"))
    }
    assert_eq!(replicas(&single).map(str::trim), Some("replicas: 1"), "single-node: one gateway");
    assert!(
        gateway(&single).is_some_and(|d| d.contains("claimName: gateway-data")),
        "single-node: the gateway keeps its store on a volume"
    );
    assert!(
        gateway(&cluster).is_some_and(|d| d.contains("emptyDir:") && !d.contains("gateway-data")),
        "cluster: each replica rebuilds its view into scratch space"
    );
    assert_eq!(replicas(&cluster).map(str::trim), Some("replicas: 2"), "cluster: two gateway replicas");
    Ok(())
}
