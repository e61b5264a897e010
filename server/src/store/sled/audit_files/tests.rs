//! Tests of the audit files: frames, rotation, torn tails, readers and removal.

use super::*;

fn seg(first: u64, bytes: &[u8]) -> Segment {
    Segment {
        first,
        bytes: bytes.to_vec(),
        last_hash: [first as u8; 32],
    }
}

#[test]
fn frames_round_trip_and_stop_at_a_torn_or_damaged_one() {
    let mut bytes = Vec::new();
    put_frame(&mut bytes, &seg(1, b"one"));
    put_frame(&mut bytes, &seg(2, b"two two"));
    let whole = bytes.len();
    put_frame(&mut bytes, &seg(4, b"three"));
    let (got, end) = frames(&bytes);
    assert_eq!(
        got,
        vec![seg(1, b"one"), seg(2, b"two two"), seg(4, b"three")]
    );
    assert_eq!(end, bytes.len());
    for cut in whole..bytes.len() {
        let (got, end) = frames(&bytes[..cut]);
        assert_eq!((got.len(), end), (2, whole), "cut at {cut}");
    }
    for at in [whole + 13, bytes.len() - 20] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1;
        assert_eq!(frames(&damaged).1, whole);
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (files, last) = AuditFiles::open_with(dir.path(), ROTATE_BYTES).unwrap();
        assert!(last.is_none());
        assert!(files.append(|| Some(seg(1, b"a"))).unwrap());
        assert!(files.append(|| Some(seg(2, b"bb"))).unwrap());
        assert!(!files.append(|| None).unwrap());
    }
    let path = dir.path().join(file_name(1));
    let mut half = Vec::new();
    put_frame(&mut half, &seg(3, b"never acknowledged"));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&half[..30]).unwrap();
    drop(file);
    let (files, last) = AuditFiles::open_with(dir.path(), ROTATE_BYTES).unwrap();
    assert_eq!(last, Some(seg(2, b"bb")));
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".torn")));
    files.append(|| Some(seg(3, b"ccc"))).unwrap();
    let mut seen = Vec::new();
    files
        .read_from(None, |s| {
            seen.push(s.unwrap().first);
            Ok(true)
        })
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
    // From the segment holding 2 on.
    seen.clear();
    files
        .read_from(Some(2), |s| {
            seen.push(s.unwrap().first);
            Ok(true)
        })
        .unwrap();
    assert_eq!(seen, vec![2, 3]);
}

#[test]
fn files_rotate_and_pruned_files_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = AuditFiles::open_with(dir.path(), 100).unwrap();
    for first in 1..=6u64 {
        files.append(|| Some(seg(first, &[b'x'; 20]))).unwrap();
    }
    let firsts: Vec<u64> = files.list().iter().map(|f| f.first).collect();
    assert_eq!(firsts, vec![1, 3, 5]);
    assert_eq!(files.closed().len(), 2, "all but the file being written");
    files.close_active(3);
    assert_eq!(files.closed().len(), 2, "3 is not the file being written");
    files.close_active(5);
    assert_eq!(files.closed().len(), 3);
    files.append(|| Some(seg(7, b"yy"))).unwrap();
    assert_eq!(files.list().len(), 4);
    files.remove_before(5).unwrap();
    let firsts: Vec<u64> = files.list().iter().map(|f| f.first).collect();
    assert_eq!(firsts, vec![5, 7]);
    assert!(!dir.path().join(file_name(1)).exists());
    // The file being written is never removed.
    files.remove_before(u64::MAX).unwrap();
    assert_eq!(
        files.list().iter().map(|f| f.first).collect::<Vec<_>>(),
        vec![7]
    );
    drop(files);
    let (files, last) = AuditFiles::open_with(dir.path(), ROTATE_BYTES).unwrap();
    assert_eq!(last, Some(seg(7, b"yy")));
    // Once closed, the last file too can go: every file is removed.
    files.close_active(7);
    assert_eq!(files.closed().len(), 1);
    files.remove_before(8).unwrap();
    assert!(files.list().is_empty());
    assert!(!dir.path().join(file_name(7)).exists());
    drop(files);
    let (_, last) = AuditFiles::open_with(dir.path(), ROTATE_BYTES).unwrap();
    assert_eq!(last, None);
}
