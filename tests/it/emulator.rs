//! The DSM emulator driven with raw HTTP requests (reqwest), independent of
//! synback's DSM client: every call, every error code it promises, and one
//! test per fault.

// Test helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use reqwest::multipart::{Form, Part};
use serde_json::Value;
use synback::{
    emulator::{Emulator, EmulatorConfig},
    secret::Secret,
    totp::Totp,
};
use tempfile::TempDir;

const OTP_SECRET: &str = "JBSWY3DPEHPK3PXP";

struct Nas {
    emu: Emulator,
    http: reqwest::Client,
    dir: TempDir,
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A plain reqwest client (reqwest is built without a default TLS provider).
fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30))
}

async fn start_with(change: impl FnOnce(&mut EmulatorConfig)) -> Nas {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EmulatorConfig::new(dir.path().join("root"), "alice", "s3cret pw");
    change(&mut cfg);
    let emu = Emulator::start(cfg, any_port()).await.unwrap();
    let http = http_client().build().unwrap();
    Nas { emu, http, dir }
}

async fn start() -> Nas {
    start_with(|_| {}).await
}

fn code(v: &Value) -> Option<i64> {
    v["error"]["code"].as_i64()
}

fn pairs<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(extra).copied().collect()
}

impl Nas {
    fn endpoint(&self, cgi: &str) -> String {
        format!("{}/webapi/{cgi}", self.emu.url())
    }

    async fn post(&self, cgi: &str, form: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .post(self.endpoint(cgi))
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn get(&self, cgi: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(self.endpoint(cgi))
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn login_with(&self, extra: &[(&str, &str)]) -> Value {
        let base = [
            ("api", "SYNO.API.Auth"),
            ("version", "7"),
            ("method", "login"),
            ("account", "alice"),
            ("passwd", "s3cret pw"),
            ("format", "sid"),
        ];
        self.post("entry.cgi", &pairs(&base, extra)).await
    }

    async fn login(&self) -> String {
        let v = self.login_with(&[]).await;
        assert_eq!(v["success"], true, "{v}");
        v["data"]["sid"].as_str().unwrap().to_owned()
    }

    async fn api(
        &self,
        sid: &str,
        api: &str,
        version: &str,
        method: &str,
        extra: &[(&str, &str)],
    ) -> Value {
        let base = [
            ("api", api),
            ("version", version),
            ("method", method),
            ("_sid", sid),
        ];
        self.post("entry.cgi", &pairs(&base, extra)).await
    }

    fn upload_url(&self, sid: &str, version: &str) -> String {
        format!(
            "{}?api=SYNO.FileStation.Upload&version={version}&method=upload&_sid={sid}",
            self.endpoint("entry.cgi")
        )
    }

    async fn upload_form(
        &self,
        sid: &str,
        version: &str,
        form: Form,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.upload_url(sid, version))
            .multipart(form)
            .send()
            .await
    }

    async fn upload(
        &self,
        sid: &str,
        version: &str,
        fields: &[(&str, &str)],
        name: &str,
        data: Vec<u8>,
    ) -> Value {
        let mut form = Form::new();
        for (k, v) in fields {
            form = form.text((*k).to_owned(), (*v).to_owned());
        }
        form = form.part("file", Part::bytes(data).file_name(name.to_owned()));
        let resp = self.upload_form(sid, version, form).await.unwrap();
        resp.json().await.unwrap()
    }

    async fn md5(&self, sid: &str, path: &str) -> String {
        let start = self
            .api(
                sid,
                "SYNO.FileStation.MD5",
                "2",
                "start",
                &[("file_path", path)],
            )
            .await;
        let task = start["data"]["taskid"].as_str().unwrap().to_owned();
        let quoted = format!("\"{task}\"");
        for _ in 0..500 {
            let st = self
                .api(
                    sid,
                    "SYNO.FileStation.MD5",
                    "2",
                    "status",
                    &[("taskid", &quoted)],
                )
                .await;
            if st["data"]["finished"] == true {
                return st["data"]["md5"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("md5 task never finished");
    }

    fn share(&self) -> std::path::PathBuf {
        self.emu.share_path("backup")
    }
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

#[test]
fn emulator_can_be_shared_between_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Emulator>();
    assert_send_sync::<synback::emulator::FaultHandle>();
}

#[tokio::test]
async fn dropping_the_emulator_stops_it() {
    let nas = start().await;
    let url = format!(
        "{}?api=SYNO.API.Info&version=1&method=query",
        nas.endpoint("query.cgi")
    );
    assert!(nas.http.get(&url).send().await.is_ok());
    let Nas { emu, http, dir } = nas;
    drop(emu);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = http_client().build().unwrap();
    assert!(
        fresh.get(&url).send().await.is_err(),
        "nothing listens any more"
    );
    drop((http, dir));
}

// ---------------------------------------------------------------- API.Info

#[tokio::test]
async fn api_info_answers_at_query_and_entry_cgi() {
    let nas = start().await;
    let q = [
        ("api", "SYNO.API.Info"),
        ("version", "1"),
        ("method", "query"),
        ("query", "all"),
    ];
    for cgi in ["query.cgi", "entry.cgi"] {
        let v = nas.get(cgi, &q).await;
        assert_eq!(v["data"]["SYNO.API.Auth"]["path"], "entry.cgi");
        assert_eq!(v["data"]["SYNO.API.Auth"]["maxVersion"], 7);
        assert_eq!(v["data"]["SYNO.FileStation.List"]["requestFormat"], "JSON");
        assert_eq!(v["data"]["SYNO.FileStation.Upload"]["maxVersion"], 3);
    }
    let some = nas
        .get(
            "query.cgi",
            &[
                ("api", "SYNO.API.Info"),
                ("version", "1"),
                ("method", "query"),
                ("query", "SYNO.FileStation."),
            ],
        )
        .await;
    assert!(some["data"].get("SYNO.API.Auth").is_none());
    assert!(some["data"].get("SYNO.FileStation.MD5").is_some());
}

#[tokio::test]
async fn bad_api_method_or_version_get_101_to_104() {
    let nas = start().await;
    let v = nas
        .get(
            "entry.cgi",
            &[("api", "SYNO.API.Info"), ("method", "query")],
        )
        .await;
    assert_eq!(code(&v), Some(101));
    let v = nas
        .get(
            "entry.cgi",
            &[("api", "SYNO.Nope"), ("version", "1"), ("method", "query")],
        )
        .await;
    assert_eq!(code(&v), Some(102));
    let v = nas
        .get(
            "entry.cgi",
            &[
                ("api", "SYNO.API.Info"),
                ("version", "1"),
                ("method", "nope"),
            ],
        )
        .await;
    assert_eq!(code(&v), Some(103));
    let v = nas
        .get(
            "entry.cgi",
            &[
                ("api", "SYNO.API.Auth"),
                ("version", "8"),
                ("method", "login"),
            ],
        )
        .await;
    assert_eq!(code(&v), Some(104));
    // File Station APIs live at entry.cgi only.
    let v = nas
        .get(
            "query.cgi",
            &[
                ("api", "SYNO.FileStation.List"),
                ("version", "2"),
                ("method", "list_share"),
            ],
        )
        .await;
    assert_eq!(code(&v), Some(102));
    let resp = nas
        .http
        .get(format!("{}/webapi/nope.cgi", nas.emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

// ---------------------------------------------------------------- Auth

#[tokio::test]
async fn login_gives_sid_synotoken_and_cookie() {
    let nas = start().await;
    let resp = nas
        .http
        .post(nas.endpoint("entry.cgi"))
        .form(&[
            ("api", "SYNO.API.Auth"),
            ("version", "6"),
            ("method", "login"),
            ("account", "alice"),
            ("passwd", "s3cret pw"),
            ("enable_syno_token", "yes"),
        ])
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    let sid = v["data"]["sid"].as_str().unwrap().to_owned();
    let token = v["data"]["synotoken"].as_str().unwrap().to_owned();
    assert!(cookie.starts_with(&format!("id={sid}")), "{cookie}");

    let list = [
        ("api", "SYNO.FileStation.List"),
        ("version", "2"),
        ("method", "list_share"),
    ];
    let by_cookie = |token: Option<&str>| {
        let mut req = nas
            .http
            .post(nas.endpoint("entry.cgi"))
            .form(&list)
            .header("cookie", format!("id={sid}"));
        if let Some(t) = token {
            req = req.header("X-SYNO-TOKEN", t);
        }
        req
    };
    let v: Value = by_cookie(None).send().await.unwrap().json().await.unwrap();
    assert_eq!(code(&v), Some(119), "cookie without SynoToken");
    let v: Value = by_cookie(Some(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["success"], true, "{v}");
    let v: Value = by_cookie(Some("wrong"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), Some(119));
    // SynoToken as a parameter works too, and _sid alone is enough.
    let v = nas
        .post(
            "entry.cgi",
            &pairs(&list, &[("_sid", &sid), ("SynoToken", &token)]),
        )
        .await;
    assert_eq!(v["success"], true);
    let v = nas
        .post("entry.cgi", &pairs(&list, &[("_sid", &sid)]))
        .await;
    assert_eq!(v["success"], true);
    let v = nas.post("entry.cgi", &list).await;
    assert_eq!(code(&v), Some(119), "no session at all");
    let v = nas
        .post("entry.cgi", &pairs(&list, &[("_sid", "made-up")]))
        .await;
    assert_eq!(code(&v), Some(119));
}

#[tokio::test]
async fn wrong_password_is_400_and_repeated_failures_block_the_ip_407() {
    let nas = start().await;
    for _ in 0..5 {
        let v = nas.login_with(&[("passwd", "wrong")]).await;
        assert_eq!(code(&v), Some(400));
    }
    let v = nas.login_with(&[]).await;
    assert_eq!(code(&v), Some(407), "blocked even with the right password");
}

#[tokio::test]
async fn otp_required_wrong_and_device_token() {
    let nas = start_with(|c| c.otp_secret = Some(OTP_SECRET.into())).await;
    assert_eq!(code(&nas.login_with(&[]).await), Some(403));
    assert_eq!(
        code(&nas.login_with(&[("otp_code", "12345x")]).await),
        Some(404)
    );
    let otp = Totp::from_base32(&Secret::new(OTP_SECRET)).unwrap().now();
    let v = nas
        .login_with(&[
            ("otp_code", otp.expose()),
            ("enable_device_token", "yes"),
            ("device_name", "ci"),
        ])
        .await;
    assert_eq!(v["success"], true, "{v}");
    let did = v["data"]["did"].as_str().unwrap().to_owned();
    let v = nas.login_with(&[("device_id", &did)]).await;
    assert_eq!(v["success"], true, "device token skips OTP");
    assert!(v["data"].get("did").is_none());
    assert_eq!(
        code(&nas.login_with(&[("device_id", "unknown")]).await),
        Some(403)
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let nas = start().await;
    let sid = nas.login().await;
    let v = nas.api(&sid, "SYNO.API.Auth", "7", "logout", &[]).await;
    assert_eq!(v["success"], true);
    let v = nas
        .api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
        .await;
    assert_eq!(code(&v), Some(119));
}

#[tokio::test]
async fn restart_loses_sessions_but_keeps_files() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.upload(
        &sid,
        "2",
        &[("path", "/backup")],
        "keep.txt",
        b"kept".to_vec(),
    )
    .await;
    nas.emu.restart_sessions();
    let v = nas
        .api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
        .await;
    assert_eq!(code(&v), Some(119));
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.List",
            "2",
            "list",
            &[("folder_path", "/backup")],
        )
        .await;
    assert_eq!(v["data"]["files"][0]["name"], "keep.txt");
}

#[tokio::test]
async fn dsm_and_file_station_info() {
    let nas = start().await;
    let sid = nas.login().await;
    let v = nas.api(&sid, "SYNO.DSM.Info", "2", "getinfo", &[]).await;
    assert!(
        v["data"]["version_string"]
            .as_str()
            .unwrap()
            .starts_with("DSM 7")
    );
    let v = nas
        .api(&sid, "SYNO.FileStation.Info", "2", "get", &[])
        .await;
    assert_eq!(v["data"]["hostname"], "synback-emu");
}

// ---------------------------------------------------------------- List

#[tokio::test]
async fn list_share_with_additional() {
    let nas = start_with(|c| c.shares = vec!["backup".into(), "media".into()]).await;
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.List",
            "2",
            "list_share",
            &[(
                "additional",
                r#"["real_path","owner","perm","volume_status"]"#,
            )],
        )
        .await;
    assert_eq!(v["data"]["total"], 2);
    let first = &v["data"]["shares"][0];
    assert_eq!(first["path"], "/backup");
    assert_eq!(first["additional"]["real_path"], "/volume1/backup");
    assert_eq!(first["additional"]["perm"]["share_right"], "RW");
    assert!(first["additional"]["volume_status"]["freespace"].is_u64());
}

#[tokio::test]
async fn list_pages_sorts_and_filters() {
    let nas = start().await;
    let dir = nas.share().join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..250 {
        std::fs::write(dir.join(format!("f{i:03}.txt")), vec![0u8; i]).unwrap();
    }
    std::fs::create_dir(dir.join("sub")).unwrap();
    let sid = nas.login().await;
    let list = |extra: Vec<(&'static str, String)>| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            let mut form: Vec<(&str, String)> = vec![
                ("api", "SYNO.FileStation.List".into()),
                ("version", "2".into()),
                ("method", "list".into()),
                ("_sid", sid),
                ("folder_path", "\"/backup/many\"".into()),
            ];
            form.extend(extra);
            let resp = nas
                .http
                .post(nas.endpoint("entry.cgi"))
                .form(&form)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let v = list(vec![]).await;
    assert_eq!(v["data"]["total"], 251);
    assert_eq!(
        v["data"]["files"].as_array().unwrap().len(),
        100,
        "small default page"
    );
    let v = list(vec![("offset", "200".into()), ("limit", "100".into())]).await;
    assert_eq!(v["data"]["files"].as_array().unwrap().len(), 51);
    assert_eq!(v["data"]["offset"], 200);
    let v = list(vec![("limit", "0".into())]).await;
    assert_eq!(
        v["data"]["files"].as_array().unwrap().len(),
        251,
        "limit 0 = all"
    );
    let v = list(vec![
        ("sort_by", "size".into()),
        ("sort_direction", "desc".into()),
        ("filetype", "file".into()),
        ("limit", "1".into()),
        ("additional", "[\"size\",\"time\"]".into()),
    ])
    .await;
    assert_eq!(v["data"]["files"][0]["name"], "f249.txt");
    assert_eq!(v["data"]["files"][0]["additional"]["size"], 249);
    assert!(v["data"]["files"][0]["additional"]["time"]["mtime"].is_i64());
    let v = list(vec![("pattern", "f00*".into())]).await;
    assert_eq!(v["data"]["total"], 10);
    let v = list(vec![("filetype", "dir".into())]).await;
    assert_eq!(v["data"]["files"][0]["name"], "sub");
    assert_eq!(v["data"]["files"][0]["isdir"], true);
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.List",
            "2",
            "list",
            &[("folder_path", "/backup/none")],
        )
        .await;
    assert_eq!(code(&v), Some(408));
}

#[tokio::test]
async fn getinfo_reports_missing_paths_as_408_entries() {
    let nas = start().await;
    std::fs::write(nas.share().join("a.txt"), b"abc").unwrap();
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.List",
            "2",
            "getinfo",
            &[
                ("path", r#"["/backup/a.txt","/backup/missing"]"#),
                ("additional", "[\"size\"]"),
            ],
        )
        .await;
    let files = v["data"]["files"].as_array().unwrap();
    assert_eq!(files[0]["additional"]["size"], 3);
    assert_eq!(files[1]["code"], 408);
}

#[tokio::test]
async fn paths_outside_a_share_get_dsm_codes() {
    let nas = start().await;
    let sid = nas.login().await;
    let list = |p: &'static str| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            code(
                &nas.api(
                    &sid,
                    "SYNO.FileStation.List",
                    "2",
                    "list",
                    &[("folder_path", p)],
                )
                .await,
            )
        }
    };
    assert_eq!(list("/backup/../..").await, Some(418));
    assert_eq!(list("/etc").await, Some(408));
    assert_eq!(list("backup").await, Some(408));
    assert_eq!(list("/backup/").await, Some(408), "trailing slash");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/", nas.share().join("escape")).unwrap();
        assert_eq!(list("/backup/escape/etc").await, Some(418));
    }
    let v = nas
        .upload(
            &sid,
            "2",
            &[("path", "/backup/../../x")],
            "evil",
            b"x".to_vec(),
        )
        .await;
    assert_eq!(code(&v), Some(418));
    assert!(!nas.dir.path().join("x").exists());
}

// ---------------------------------------------------------------- folders

#[tokio::test]
async fn create_folder_with_and_without_force_parent() {
    let nas = start().await;
    let sid = nas.login().await;
    let cf = |extra: Vec<(&'static str, &'static str)>| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            nas.api(&sid, "SYNO.FileStation.CreateFolder", "2", "create", &extra)
                .await
        }
    };
    let v = cf(vec![
        ("folder_path", "[\"/backup/a\"]"),
        ("name", "[\"b\"]"),
    ])
    .await;
    assert_eq!(code(&v), Some(1100));
    assert_eq!(v["error"]["errors"][0]["code"], 408);
    let v = cf(vec![
        ("folder_path", "[\"/backup/a\"]"),
        ("name", "[\"b\"]"),
        ("force_parent", "true"),
    ])
    .await;
    assert_eq!(v["data"]["folders"][0]["path"], "/backup/a/b");
    assert!(nas.share().join("a/b").is_dir());
    let v = cf(vec![
        ("folder_path", "/backup/a"),
        ("name", "b"),
        ("force_parent", "true"),
    ])
    .await;
    assert_eq!(
        v["success"], true,
        "existing folder with force_parent is fine"
    );
    let v = cf(vec![("folder_path", "/backup/a"), ("name", "b")]).await;
    assert_eq!(v["error"]["errors"][0]["code"], 414);
    let v = cf(vec![("folder_path", "/backup"), ("name", "..")]).await;
    assert_eq!(v["error"]["errors"][0]["code"], 419);
    let v = cf(vec![("folder_path", "/"), ("name", "newshare")]).await;
    assert_eq!(v["error"]["errors"][0]["code"], 407);
}

#[tokio::test]
async fn check_permission_write() {
    let nas = start().await;
    std::fs::write(nas.share().join("x"), b"x").unwrap();
    let sid = nas.login().await;
    let cp = |extra: Vec<(&'static str, &'static str)>| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            nas.api(
                &sid,
                "SYNO.FileStation.CheckPermission",
                "3",
                "write",
                &extra,
            )
            .await
        }
    };
    assert_eq!(
        cp(vec![("path", "/backup"), ("filename", "y")]).await["success"],
        true
    );
    assert_eq!(
        code(&cp(vec![("path", "/backup/nope"), ("filename", "y")]).await),
        Some(408)
    );
    assert_eq!(
        code(
            &cp(vec![
                ("path", "/backup"),
                ("filename", "x"),
                ("create_only", "true")
            ])
            .await
        ),
        Some(414)
    );
}

// ---------------------------------------------------------------- upload

#[tokio::test]
async fn upload_overwrite_semantics_per_version() {
    let nas = start().await;
    let sid = nas.login().await;
    let f = nas.share().join("f.bin");
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "f.bin", b"one".to_vec())
        .await;
    assert_eq!(v["data"]["blSkip"], false, "{v}");
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "f.bin", b"two".to_vec())
        .await;
    assert_eq!(code(&v), Some(1805), "exists and no overwrite");
    let v = nas
        .upload(
            &sid,
            "2",
            &[("path", "/backup"), ("overwrite", "false")],
            "f.bin",
            b"two".to_vec(),
        )
        .await;
    assert_eq!(v["data"]["blSkip"], true);
    assert_eq!(std::fs::read(&f).unwrap(), b"one");
    let v = nas
        .upload(
            &sid,
            "2",
            &[("path", "/backup"), ("overwrite", "true")],
            "f.bin",
            b"two".to_vec(),
        )
        .await;
    assert_eq!(v["success"], true);
    assert_eq!(std::fs::read(&f).unwrap(), b"two");
    let v = nas
        .upload(
            &sid,
            "3",
            &[("path", "/backup"), ("overwrite", "skip")],
            "f.bin",
            b"3".to_vec(),
        )
        .await;
    assert_eq!(v["data"]["blSkip"], true);
    let v = nas
        .upload(
            &sid,
            "3",
            &[("path", "/backup"), ("overwrite", "overwrite")],
            "f.bin",
            b"three".to_vec(),
        )
        .await;
    assert_eq!(v["success"], true);
    assert_eq!(std::fs::read(&f).unwrap(), b"three");
    let v = nas
        .upload(
            &sid,
            "3",
            &[("path", "/backup"), ("overwrite", "true")],
            "f.bin",
            b"x".to_vec(),
        )
        .await;
    assert_eq!(code(&v), Some(400), "v3 wants overwrite/skip");
}

#[tokio::test]
async fn upload_create_parents_mtime_and_json_values() {
    let nas = start().await;
    let sid = nas.login().await;
    let v = nas
        .upload(&sid, "2", &[("path", "/backup/x/y")], "a", b"a".to_vec())
        .await;
    assert_eq!(code(&v), Some(408), "missing folder without create_parents");
    let v = nas
        .upload(
            &sid,
            "2",
            &[
                ("path", "\"/backup/x/y\""),
                ("create_parents", "true"),
                ("mtime", "1600000000000"),
            ],
            "a",
            b"a".to_vec(),
        )
        .await;
    assert_eq!(v["success"], true, "{v}");
    let meta = std::fs::metadata(nas.share().join("x/y/a")).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert_eq!(mtime.as_secs(), 1_600_000_000);
    let leftovers: Vec<_> = std::fs::read_dir(nas.share().join("x/y"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");
}

#[tokio::test]
async fn upload_fields_after_the_file_part_are_ignored() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.upload(&sid, "2", &[("path", "/backup")], "f", b"old".to_vec())
        .await;
    let form = Form::new()
        .text("path", "/backup")
        .part("file", Part::bytes(b"new".to_vec()).file_name("f"))
        .text("overwrite", "true");
    let v: Value = nas
        .upload_form(&sid, "2", form)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        code(&v),
        Some(1805),
        "overwrite after the file part is not seen"
    );
    let form = Form::new()
        .part("file", Part::bytes(b"x".to_vec()).file_name("g"))
        .text("path", "/backup");
    let v: Value = nas
        .upload_form(&sid, "2", form)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), Some(114), "path after the file part is missing");
    let form = Form::new()
        .text("path", "/backup")
        .part("file", Part::bytes(b"x".to_vec()));
    let v: Value = nas
        .upload_form(&sid, "2", form)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), Some(1802), "no filename");
}

#[tokio::test]
async fn upload_api_fields_may_come_in_the_form() {
    let nas = start().await;
    let sid = nas.login().await;
    let form = Form::new()
        .text("api", "SYNO.FileStation.Upload")
        .text("version", "2")
        .text("method", "upload")
        .text("_sid", sid.clone())
        .text("path", "/backup")
        .part("file", Part::bytes(b"x".to_vec()).file_name("in-form"));
    let resp = nas
        .http
        .post(nas.endpoint("entry.cgi"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["success"], true, "{v}");
    assert!(nas.share().join("in-form").exists());
}

fn chunked_part(data: Vec<u8>) -> Part {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks,
    )))
    .file_name("chunked")
}

#[tokio::test]
async fn chunked_upload_is_accepted_unless_strict_then_1800() {
    let nas = start().await;
    let sid = nas.login().await;
    let form = Form::new()
        .text("path", "/backup")
        .part("file", chunked_part(vec![7u8; 5000]));
    let v: Value = nas
        .upload_form(&sid, "2", form)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["success"], true, "{v}");

    let strict = start_with(|c| c.strict_content_length = true).await;
    let sid = strict.login().await;
    let form = Form::new()
        .text("path", "/backup")
        .part("file", chunked_part(vec![7u8; 5000]));
    let v: Value = strict
        .upload_form(&sid, "2", form)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), Some(1800));
    assert!(!strict.share().join("chunked").exists());
    let v = strict
        .upload(&sid, "2", &[("path", "/backup")], "sized", vec![1u8; 5000])
        .await;
    assert_eq!(v["success"], true, "known length is fine");
}

// ---------------------------------------------------------------- MD5, download

#[tokio::test]
async fn md5_is_a_background_task() {
    let nas = start_with(|c| c.faults.task_min_duration = Some(Duration::from_millis(300))).await;
    let sid = nas.login().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    nas.upload(&sid, "2", &[("path", "/backup")], "d", data.clone())
        .await;
    let start = nas
        .api(
            &sid,
            "SYNO.FileStation.MD5",
            "2",
            "start",
            &[("file_path", "\"/backup/d\"")],
        )
        .await;
    let task = start["data"]["taskid"].as_str().unwrap().to_owned();
    let st = nas
        .api(
            &sid,
            "SYNO.FileStation.MD5",
            "2",
            "status",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(st["data"]["finished"], false);
    assert_eq!(nas.md5(&sid, "/backup/d").await, md5_hex(&data));
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.MD5",
            "2",
            "stop",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(v["success"], true);
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.MD5",
            "2",
            "status",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(code(&v), Some(599));
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.MD5",
            "2",
            "start",
            &[("file_path", "/backup/none")],
        )
        .await;
    assert_eq!(code(&v), Some(408));
}

#[tokio::test]
async fn download_streams_the_file_and_404s_on_error() {
    let nas = start().await;
    let sid = nas.login().await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    nas.upload(&sid, "2", &[("path", "/backup")], "big", data.clone())
        .await;
    let dl = |path: &'static str| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            nas.http
                .get(nas.endpoint("entry.cgi"))
                .query(&[
                    ("api", "SYNO.FileStation.Download"),
                    ("version", "2"),
                    ("method", "download"),
                    ("mode", "download"),
                    ("path", path),
                    ("_sid", &sid),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let resp = dl("/backup/big").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(dl("/backup/none").await.status(), 404);
    assert_eq!(dl("/backup").await.status(), 404, "folders would be a zip");
    assert_eq!(dl("[\"/backup/big\"]").await.status(), 200, "JSON path");
}

// ---------------------------------------------------------------- rename, delete, dirsize

#[tokio::test]
async fn rename_and_its_errors() {
    let nas = start().await;
    std::fs::write(nas.share().join("a"), b"a").unwrap();
    std::fs::write(nas.share().join("b"), b"b").unwrap();
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Rename",
            "2",
            "rename",
            &[("path", "/backup/a"), ("name", "c")],
        )
        .await;
    assert_eq!(v["data"]["files"][0]["path"], "/backup/c");
    assert!(nas.share().join("c").exists());
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Rename",
            "2",
            "rename",
            &[("path", "/backup/c"), ("name", "b")],
        )
        .await;
    assert_eq!(code(&v), Some(1200));
    assert_eq!(v["error"]["errors"][0]["code"], 414);
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Rename",
            "2",
            "rename",
            &[("path", "/backup/none"), ("name", "x")],
        )
        .await;
    assert_eq!(v["error"]["errors"][0]["code"], 408);
}

#[tokio::test]
async fn delete_blocking_and_as_a_task() {
    let nas = start_with(|c| c.faults.task_min_duration = Some(Duration::from_millis(200))).await;
    std::fs::create_dir_all(nas.share().join("d/e")).unwrap();
    std::fs::write(nas.share().join("d/e/f"), b"f").unwrap();
    std::fs::write(nas.share().join("g"), b"g").unwrap();
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "delete",
            &[("path", "/backup/d"), ("recursive", "false")],
        )
        .await;
    assert_eq!(code(&v), Some(900), "non-empty folder without recursive");
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "delete",
            &[("path", "/backup/none")],
        )
        .await;
    assert_eq!(v["error"]["errors"][0]["code"], 408);
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "delete",
            &[("path", "[\"/backup/g\"]")],
        )
        .await;
    assert_eq!(v["success"], true);
    assert!(!nas.share().join("g").exists());
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "delete",
            &[("path", "/backup")],
        )
        .await;
    assert_eq!(code(&v), Some(900), "a share cannot be deleted");

    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "start",
            &[("path", "[\"/backup/d\"]"), ("recursive", "true")],
        )
        .await;
    let task = v["data"]["taskid"].as_str().unwrap().to_owned();
    let st = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "status",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(st["data"]["finished"], false);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let st = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "status",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(st["data"]["finished"], true);
    assert!(!nas.share().join("d").exists());
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.Delete",
            "2",
            "stop",
            &[("taskid", &task)],
        )
        .await;
    assert_eq!(v["success"], true);
}

#[tokio::test]
async fn dir_size_task() {
    let nas = start().await;
    std::fs::create_dir_all(nas.share().join("d/e")).unwrap();
    std::fs::write(nas.share().join("d/a"), vec![0u8; 100]).unwrap();
    std::fs::write(nas.share().join("d/e/b"), vec![0u8; 50]).unwrap();
    let sid = nas.login().await;
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.DirSize",
            "2",
            "start",
            &[("path", "[\"/backup/d\"]")],
        )
        .await;
    let task = v["data"]["taskid"].as_str().unwrap().to_owned();
    let mut st = Value::Null;
    for _ in 0..100 {
        st = nas
            .api(
                &sid,
                "SYNO.FileStation.DirSize",
                "2",
                "status",
                &[("taskid", &task)],
            )
            .await;
        if st["data"]["finished"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(st["data"]["total_size"], 150, "{st}");
    assert_eq!(st["data"]["num_file"], 2);
    assert_eq!(st["data"]["num_dir"], 1);
    let v = nas
        .api(
            &sid,
            "SYNO.FileStation.DirSize",
            "2",
            "status",
            &[("taskid", "FileStation_0")],
        )
        .await;
    assert_eq!(code(&v), Some(599));
}

// ---------------------------------------------------------------- log, TLS

#[tokio::test]
async fn request_log_records_calls_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("requests.jsonl");
    let nas = start_with(|c| c.request_log = Some(log_file.clone())).await;
    let sid = nas.login().await;
    nas.upload(&sid, "2", &[("path", "/backup")], "f", vec![1u8; 1000])
        .await;
    let log = nas.emu.request_log();
    let login = log
        .iter()
        .find(|r| r.method.as_deref() == Some("login"))
        .unwrap();
    assert_eq!(login.params["passwd"], "***");
    assert_eq!(login.code, None);
    let upload = log
        .iter()
        .find(|r| r.api.as_deref() == Some("SYNO.FileStation.Upload"))
        .unwrap();
    assert_eq!(upload.params["_sid"], "***");
    assert_eq!(upload.version, Some(2));
    assert!(upload.bytes_in > 1000);
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(!text.contains("s3cret") && !text.contains(&sid));
}

#[tokio::test]
async fn tls_serves_a_self_signed_certificate_that_can_be_pinned() {
    let nas = start_with(|c| c.tls = true).await;
    assert!(nas.emu.url().starts_with("https://127.0.0.1:"));
    let pin = nas.emu.cert_sha256().unwrap();
    let http = http_client()
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .build()
        .unwrap();
    let resp = http
        .get(format!(
            "{}/webapi/query.cgi?api=SYNO.API.Info&version=1&method=query",
            nas.emu.url()
        ))
        .send()
        .await
        .unwrap();
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    use sha2::Digest;
    let seen = hex::encode(sha2::Sha256::digest(info.peer_certificate().unwrap()));
    assert_eq!(seen, pin);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["success"], true);
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn fault_drop_upload_after_cuts_the_connection() {
    let nas = start().await;
    nas.emu.faults().update(|f| {
        f.drop_upload_after = Some(10_000);
        f.drop_upload_times = Some(1);
    });
    let sid = nas.login().await;
    let form = Form::new()
        .text("path", "/backup")
        .part("file", Part::bytes(vec![9u8; 200_000]).file_name("cut"));
    let result = nas.upload_form(&sid, "2", form).await;
    let failed = match result {
        Err(_) => true,
        Ok(resp) => resp.json::<Value>().await.is_err(),
    };
    assert!(
        failed,
        "the client must see a broken connection, not an answer"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names: Vec<_> = std::fs::read_dir(nas.share()).unwrap().collect();
    assert!(
        names.is_empty(),
        "neither the file nor a temp file remains: {names:?}"
    );
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "cut", vec![9u8; 200_000])
        .await;
    assert_eq!(v["success"], true, "the fault fired once only");
    assert!(
        nas.emu
            .request_log()
            .iter()
            .any(|r| r.fault.as_deref() == Some("dropped"))
    );
}

#[tokio::test]
async fn fault_http_502_every_nth_request() {
    let nas = start().await;
    nas.emu.faults().update(|f| f.http_502_every = Some(2));
    let url = format!(
        "{}?api=SYNO.API.Info&version=1&method=query",
        nas.endpoint("query.cgi")
    );
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..4).map(|_| nas.http.get(&url).send()))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 2);
}

#[tokio::test]
async fn fault_busy_code_every_nth_file_station_call() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| f.busy_every = Some(3));
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(code(
            &nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
                .await,
        ));
    }
    assert_eq!(codes, [None, None, Some(117), None, None, Some(117)]);
    nas.emu.faults().update(|f| {
        f.busy_every = Some(1);
        f.busy_code = 118;
    });
    assert_eq!(
        code(
            &nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
                .await
        ),
        Some(118)
    );
}

#[tokio::test]
async fn fault_slow_link_limits_upload_and_download() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| f.slow_kib_per_sec = Some(256));
    let t = Instant::now();
    let v = nas
        .upload(
            &sid,
            "2",
            &[("path", "/backup")],
            "slow",
            vec![1u8; 128 * 1024],
        )
        .await;
    assert_eq!(v["success"], true);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let resp = nas
        .http
        .get(nas.endpoint("entry.cgi"))
        .query(&[
            ("api", "SYNO.FileStation.Download"),
            ("version", "2"),
            ("method", "download"),
            ("path", "/backup/slow"),
            ("_sid", &sid),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 128 * 1024);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn fault_corrupt_upload_changes_the_md5() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| f.corrupt_uploads = 1);
    let data = vec![5u8; 10_000];
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "c1", data.clone())
        .await;
    assert_eq!(v["success"], true, "the upload itself looks fine");
    assert_ne!(nas.md5(&sid, "/backup/c1").await, md5_hex(&data));
    nas.upload(&sid, "2", &[("path", "/backup")], "c2", data.clone())
        .await;
    assert_eq!(
        nas.md5(&sid, "/backup/c2").await,
        md5_hex(&data),
        "only one upload corrupted"
    );
}

#[tokio::test]
async fn fault_quota_refuses_uploads_with_416_or_415() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| f.quota_bytes = Some(50_000));
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "fits", vec![0u8; 40_000])
        .await;
    assert_eq!(v["success"], true);
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "full", vec![0u8; 40_000])
        .await;
    assert_eq!(code(&v), Some(416));
    assert!(!nas.share().join("full").exists());
    nas.emu.faults().update(|f| f.quota_code = 415);
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "full", vec![0u8; 40_000])
        .await;
    assert_eq!(code(&v), Some(415));
    assert_eq!(
        std::fs::read_dir(nas.share()).unwrap().count(),
        1,
        "no temp files left"
    );
}

#[tokio::test]
async fn fault_expire_session_after_n_calls() {
    let nas = start().await;
    nas.emu
        .faults()
        .update(|f| f.expire_session_after = Some(2));
    let sid = nas.login().await;
    for _ in 0..2 {
        assert_eq!(
            nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
                .await["success"],
            true
        );
    }
    assert_eq!(
        code(
            &nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
                .await
        ),
        Some(106)
    );
    assert_eq!(
        code(
            &nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
                .await
        ),
        Some(106)
    );
    let sid = nas.login().await;
    assert_eq!(
        nas.api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
            .await["success"],
        true
    );
}

#[tokio::test]
async fn fault_wake_delay_slows_the_first_request_only() {
    let nas = start_with(|c| c.faults.wake_delay = Some(Duration::from_millis(400))).await;
    let q = [
        ("api", "SYNO.API.Info"),
        ("version", "1"),
        ("method", "query"),
    ];
    let t = Instant::now();
    nas.get("query.cgi", &q).await;
    assert!(t.elapsed() >= Duration::from_millis(400));
    let t = Instant::now();
    nas.get("query.cgi", &q).await;
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn fault_oversize_requests_get_413_or_504() {
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu
        .faults()
        .update(|f| f.max_request_bytes = Some(100_000));
    let form = Form::new()
        .text("path", "/backup")
        .part("file", Part::bytes(vec![0u8; 200_000]).file_name("big"));
    let resp = nas.upload_form(&sid, "2", form).await.unwrap();
    assert_eq!(resp.status(), 413);
    nas.emu.faults().update(|f| f.oversize_status = 504);
    let form = Form::new()
        .text("path", "/backup")
        .part("file", chunked_part(vec![0u8; 200_000]));
    let resp = nas.upload_form(&sid, "2", form).await;
    if let Ok(resp) = resp {
        assert_eq!(
            resp.status(),
            504,
            "chunked body cut when it grows too large"
        );
    }
    assert!(!nas.share().join("big").exists() && !nas.share().join("chunked").exists());
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "small", vec![0u8; 1000])
        .await;
    assert_eq!(v["success"], true);
}

// ---------------------------------------------------------------- CLI

/// Kills the emulator process if the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_prints_its_url_and_stops_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("synback"))
        .args([
            "nas-emulator",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "alice",
            "--share",
            "backup",
            "media",
        ])
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--password-file")
        .arg(&pw)
        .args(["--busy-every", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let mut child = child;
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(dir.path().join("root/media").is_dir());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v: Value = rt.block_on(async {
        let http = http_client().build().unwrap();
        let login: Value = http
            .post(format!("{url}/webapi/entry.cgi"))
            .form(&[
                ("api", "SYNO.API.Auth"),
                ("version", "7"),
                ("method", "login"),
                ("account", "alice"),
                ("passwd", "pw"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sid = login["data"]["sid"].as_str().unwrap().to_owned();
        http.post(format!("{url}/webapi/entry.cgi"))
            .form(&[
                ("api", "SYNO.FileStation.List"),
                ("version", "2"),
                ("method", "list_share"),
                ("_sid", &sid),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(code(&v), Some(117), "fault flags reach the emulator");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

// ---------------------------------------------------------------- aimed faults and hold points

fn aimed(api: &str, action: synback::emulator::FaultAction) -> synback::emulator::AimedFault {
    synback::emulator::AimedFault::new(api, action)
}

#[tokio::test]
async fn aimed_code_hits_only_the_nth_matching_upload() {
    use synback::emulator::FaultAction;
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| {
        f.aimed.push(
            aimed("SYNO.FileStation.Upload", FaultAction::Code(416))
                .name_contains(".002")
                .nth(2),
        );
    });
    let up =
        |name: &'static str| nas.upload(&sid, "2", &[("path", "/backup")], name, vec![1u8; 100]);
    assert_eq!(up("a.002").await["success"], true, "1st match passes");
    assert_eq!(up("a.001").await["success"], true, "no match");
    let v = up("b.002").await;
    assert_eq!(code(&v), Some(416), "2nd match gets the code: {v}");
    assert!(!nas.share().join("b.002").exists(), "nothing stored");
    assert_eq!(up("c.002").await["success"], true, "times = 1 by default");
    let log = nas.emu.request_log();
    assert_eq!(
        log.iter()
            .filter(|r| r.fault.as_deref() == Some("aimed_code"))
            .count(),
        1
    );
}

#[tokio::test]
async fn aimed_http_status_drop_and_delay_hit_a_method() {
    use synback::emulator::FaultAction;
    let nas = start().await;
    let sid = nas.login().await;
    nas.upload(&sid, "2", &[("path", "/backup")], "f", vec![2u8; 10])
        .await;
    let rename = |to: &'static str, from: &'static str| {
        let nas = &nas;
        let sid = sid.clone();
        async move {
            nas.http
                .post(nas.endpoint("entry.cgi"))
                .form(&[
                    ("api", "SYNO.FileStation.Rename"),
                    ("version", "2"),
                    ("method", "rename"),
                    ("path", from),
                    ("name", to),
                    ("_sid", &sid),
                ])
                .send()
                .await
        }
    };
    nas.emu.faults().update(|f| {
        f.aimed.push(
            aimed("SYNO.FileStation.Rename", FaultAction::Http(502))
                .method("rename")
                .times(Some(2)),
        );
    });
    for _ in 0..2 {
        assert_eq!(rename("g", "/backup/f").await.unwrap().status(), 502);
    }
    assert!(
        nas.share().join("f").exists(),
        "a refused rename did nothing"
    );
    nas.emu.faults().update(|f| {
        f.aimed = vec![aimed("SYNO.FileStation.Rename", FaultAction::Drop)];
    });
    assert!(
        rename("g", "/backup/f").await.is_err(),
        "the connection is cut without an answer"
    );
    nas.emu.faults().update(|f| {
        f.aimed = vec![aimed(
            "SYNO.FileStation.Rename",
            FaultAction::Delay(Duration::from_millis(300)),
        )];
    });
    let started = Instant::now();
    let resp = rename("g", "/backup/f").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["success"], true, "a delayed call is still served: {v}");
    assert!(nas.share().join("g").exists());
}

#[tokio::test]
async fn aimed_expire_sessions_gets_119_and_logs_out_everyone() {
    use synback::emulator::FaultAction;
    let nas = start().await;
    let sid = nas.login().await;
    nas.emu.faults().update(|f| {
        f.aimed = vec![aimed("SYNO.FileStation.List", FaultAction::ExpireSessions)];
    });
    let v = nas
        .api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
        .await;
    assert!(matches!(code(&v), Some(106 | 119)), "{v}");
    let v = nas
        .api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
        .await;
    assert!(
        matches!(code(&v), Some(106 | 119)),
        "the session stays lost"
    );
    let sid = nas.login().await;
    let v = nas
        .api(&sid, "SYNO.FileStation.List", "2", "list_share", &[])
        .await;
    assert_eq!(v["success"], true, "a new login works: {v}");
}

#[tokio::test]
async fn aimed_corrupt_flips_a_stored_upload_and_a_served_download() {
    use synback::emulator::FaultAction;
    let nas = start().await;
    let sid = nas.login().await;
    let data = vec![7u8; 50_000];
    nas.emu.faults().update(|f| {
        f.aimed = vec![
            aimed("SYNO.FileStation.Upload", FaultAction::Corrupt).name_contains("bad"),
            aimed("SYNO.FileStation.Download", FaultAction::Corrupt),
        ];
    });
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "good", data.clone())
        .await;
    assert_eq!(v["success"], true);
    let v = nas
        .upload(&sid, "2", &[("path", "/backup")], "bad", data.clone())
        .await;
    assert_eq!(v["success"], true, "the upload looks fine");
    assert_eq!(std::fs::read(nas.share().join("good")).unwrap(), data);
    assert_ne!(std::fs::read(nas.share().join("bad")).unwrap(), data);
    let download = || async {
        nas.http
            .get(nas.endpoint("entry.cgi"))
            .query(&[
                ("api", "SYNO.FileStation.Download"),
                ("version", "2"),
                ("method", "download"),
                ("mode", "download"),
                ("path", "/backup/good"),
                ("_sid", &sid),
            ])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let first = download().await;
    assert_eq!(first.len(), data.len());
    assert_ne!(first.as_ref(), data.as_slice(), "1st download corrupted");
    assert_eq!(download().await.as_ref(), data.as_slice(), "then clean");
    assert_eq!(std::fs::read(nas.share().join("good")).unwrap(), data);
}

#[tokio::test]
async fn hold_points_stall_uploads_and_downloads_at_a_byte_offset() {
    let nas = start().await;
    let sid = nas.login().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    nas.upload(&sid, "2", &[("path", "/backup")], "src", data.clone())
        .await;
    let faults = nas.emu.faults();
    faults.update(|f| f.hold_uploads_at = Some(100_000));
    let nas = std::sync::Arc::new(nas);
    let upload = {
        let nas = std::sync::Arc::clone(&nas);
        let sid = sid.clone();
        let data = data.clone();
        tokio::spawn(async move {
            nas.upload(&sid, "2", &[("path", "/backup")], "held", data)
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !faults.is_holding() {
        assert!(Instant::now() < deadline, "the upload was never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(faults.uploaded_bytes().min(100_000), 100_000);
    assert!(!upload.is_finished(), "the client is stalled");
    assert!(!nas.share().join("held").exists());
    faults.clear();
    let _ = upload.await;
    assert!(!faults.is_holding());

    faults.update(|f| f.hold_downloads_at = Some(123_456));
    let resp = nas
        .http
        .get(nas.endpoint("entry.cgi"))
        .query(&[
            ("api", "SYNO.FileStation.Download"),
            ("version", "2"),
            ("method", "download"),
            ("mode", "download"),
            ("path", "/backup/src"),
            ("_sid", &sid),
        ])
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut got = 0usize;
    use futures_util::StreamExt;
    while got < 123_456 {
        got += body.next().await.unwrap().unwrap().len();
    }
    assert_eq!(got, 123_456, "exactly the bytes before the hold point");
    assert!(faults.is_holding());
    let more = tokio::time::timeout(Duration::from_millis(200), body.next()).await;
    assert!(more.is_err(), "nothing more arrives while held");
}
