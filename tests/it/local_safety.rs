//! The local side is never harmed: a backup reads sources without changing
//! their content, mtime or (with `O_NOATIME`) atime; a restore never writes
//! through a symlink planted in its target.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use filetime::FileTime;
use tokio_util::sync::CancellationToken;

use crate::support::World;

/// Mtime and atime (seconds, nanoseconds) of a file.
fn times(path: &Path) -> ((i64, i64), (i64, i64)) {
    let meta = std::fs::metadata(path).unwrap();
    (
        (meta.mtime(), meta.mtime_nsec()),
        (meta.atime(), meta.atime_nsec()),
    )
}

fn atime(path: &Path) -> (i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.atime(), meta.atime_nsec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_leaves_sources_untouched_atime_included() {
    let world = World::new("").await;
    let old = FileTime::from_unix_time(1_000_000_000, 0);
    let files = ["docs/a.txt", "docs/app.log", "noise.bin", "run.sh"];
    // Read before the times are set: reading moves the atime.
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|n| std::fs::read(world.source.join(n)).unwrap())
        .collect();
    for name in files {
        filetime::set_file_times(world.source.join(name), old, old).unwrap();
    }
    // A control file read the ordinary way shows whether this file system
    // updates atimes at all (relatime does for an atime this old).
    let control = world.dir.path().join("control");
    std::fs::write(&control, "control").unwrap();
    filetime::set_file_times(&control, old, old).unwrap();
    let before: Vec<_> = files.iter().map(|n| times(&world.source.join(n))).collect();
    let control_before = atime(&control);
    std::fs::read(&control).unwrap();
    let atimes_move = atime(&control) != control_before;

    world
        .agent()
        .backup("home", CancellationToken::new())
        .await
        .unwrap();

    for ((name, (mtime, atime)), content) in files.iter().zip(before).zip(contents) {
        let (now_mtime, now_atime) = times(&world.source.join(name));
        let now_content = std::fs::read(world.source.join(name)).unwrap();
        assert!(now_content == content, "{name}: content changed");
        assert_eq!(now_mtime, mtime, "{name}: mtime changed");
        // O_NOATIME is allowed for the file's owner (and root): the test
        // owns the files, so a changed atime means it was not used.
        if atimes_move {
            assert_eq!(now_atime, atime, "{name}: atime changed");
        }
    }
    eprintln!("atime check applied: {atimes_move}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_never_follows_symlinks_planted_in_the_target() {
    let world = World::new("").await;
    let agent = world.agent();
    agent
        .backup("home", CancellationToken::new())
        .await
        .unwrap();

    let outside = world.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file"), "outside, keep me").unwrap();
    let target = world.restore_dir("target");
    std::fs::create_dir_all(target.join("data")).unwrap();
    // `data/docs` is a folder in the snapshot, `data/run.sh` a file.
    std::os::unix::fs::symlink(&outside, target.join("data/docs")).unwrap();
    std::os::unix::fs::symlink(outside.join("file"), target.join("data/run.sh")).unwrap();

    for overwrite in [false, true] {
        let result = crate::support::restore_latest(&agent, &target, overwrite).await;
        eprintln!(
            "overwrite={overwrite}: {:?}",
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| synback::error_chain(e))
        );
        // Without overwrite, a target holding anything is refused before
        // any download; with it, the planted folder link stops the restore.
        let expected = match overwrite {
            false => "it is not empty; choose an empty folder or pass --overwrite",
            true => {
                "unsafe entry \"data/docs\": a symlink exists where the archive has a directory"
            }
        };
        let text = synback::error_chain(&result.unwrap_err());
        assert!(text.contains(expected), "overwrite={overwrite}: {text}");
        let mut names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["file"], "overwrite={overwrite}: written outside");
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "outside, keep me",
            "overwrite={overwrite}: written through a symlink"
        );
    }
    // Without the folder link, the file link alone: the restore goes
    // through, the link is replaced by the real file, the outside file is
    // untouched.
    std::fs::remove_file(target.join("data/docs")).unwrap();
    crate::support::restore_latest(&agent, &target, true)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(outside.join("file")).unwrap(),
        "outside, keep me"
    );
    let run = target.join("data/run.sh");
    assert!(
        !std::fs::symlink_metadata(&run)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(&run).unwrap(),
        std::fs::read(world.source.join("run.sh")).unwrap()
    );
}
