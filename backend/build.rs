//! Bundles the dashboard (backend/dashboard/app.js + uPlot from npm) with the
//! esbuild that `npm ci` installs, into OUT_DIR, for `include_str!`.
//! Without node_modules (a plain `cargo build` before `npm ci`) the page
//! says how to build it instead of failing the whole build.

use std::{fs, path::PathBuf, process::Command};

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let modules = manifest.join("../node_modules");
    let esbuild = modules.join(".bin/esbuild");
    let uplot_css = modules.join("uplot/dist/uPlot.min.css");
    for path in [
        "dashboard/app.js",
        "dashboard/delivery.js",
        "dashboard/app.css",
        "../node_modules/uplot/package.json",
        "../node_modules/.bin/esbuild",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }

    // A container build bundles the assets in a node stage and points here.
    println!("cargo:rerun-if-env-changed=SLUICE_DASHBOARD_DIST");
    if let Ok(dist) = std::env::var("SLUICE_DASHBOARD_DIST") {
        for file in ["dashboard.js", "dashboard.css"] {
            fs::copy(PathBuf::from(&dist).join(file), out.join(file))
                .expect("prebuilt dashboard asset");
        }
        return;
    }

    let own_css =
        fs::read_to_string(manifest.join("dashboard/app.css")).expect("dashboard/app.css");
    let bundled = esbuild.exists()
        && uplot_css.exists()
        && Command::new(&esbuild)
            .arg(manifest.join("dashboard/app.js"))
            .args([
                "--bundle",
                "--minify",
                "--format=iife",
                "--target=es2020",
                "--log-level=warning",
            ])
            .arg(format!("--outfile={}", out.join("dashboard.js").display()))
            .status()
            .is_ok_and(|s| s.success());
    if bundled {
        let uplot = fs::read_to_string(&uplot_css).expect("uPlot css");
        fs::write(out.join("dashboard.css"), format!("{uplot}\n{own_css}")).expect("write css");
    } else {
        println!("cargo:warning=dashboard not bundled (run `npm ci` at the repository root, then rebuild)");
        fs::write(
            out.join("dashboard.js"),
            "document.querySelector('main').innerHTML = '<p class=\"error\">This backend was built without its dashboard assets: run <code>npm ci</code> at the repository root and rebuild.</p>';",
        )
        .expect("write js");
        fs::write(out.join("dashboard.css"), own_css).expect("write css");
    }
}
