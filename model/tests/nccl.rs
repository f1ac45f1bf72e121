//! The NCCL communicator: id serialization everywhere; on machines without a GPU / libnccl, typed errors instead of
//! panics; on a GPU with libnccl, the world-size-1 self-check.
#![cfg(feature = "cuda")]

use std::time::Duration;

use weft_model::comm::nccl::{
    cuda_device_count, nccl_library_present, nccl_version, selfcheck_world_size_one, NcclComm,
    NcclConfig, NcclError, NcclId, NCCL_ID_BYTES, SELFCHECK_ELEMENTS,
};

#[test]
fn communicator_can_move_to_the_forward_pass_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<NcclComm>();
    assert_send::<NcclConfig>();
}

#[test]
fn id_round_trips_through_bytes() {
    let bytes: Vec<u8> = (0..NCCL_ID_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    let id = NcclId::from_bytes(&bytes).expect("128 bytes is a valid id");
    assert_eq!(id.to_bytes().as_slice(), bytes.as_slice());
    assert_eq!(NcclId::from_bytes(&id.to_bytes()).unwrap(), id);
}

#[test]
fn id_of_wrong_length_is_bad_id() {
    for len in [0, 1, NCCL_ID_BYTES - 1, NCCL_ID_BYTES + 1, 4096] {
        match NcclId::from_bytes(&vec![0u8; len]) {
            Err(NcclError::BadId(n)) => assert_eq!(n, len),
            other => panic!("length {len}: expected BadId, got {other:?}"),
        }
    }
    let msg = NcclError::BadId(3).to_string();
    assert!(msg.contains("128") && msg.contains('3'), "{msg}");
}

#[test]
fn new_id_is_an_error_not_a_panic_without_libnccl() {
    let result = NcclId::new();
    if nccl_library_present() {
        // Needs no GPU, but may still fail (e.g. no network interface for the bootstrap); it must not panic.
        let version = nccl_version().expect("ncclGetVersion works without a GPU");
        println!("libnccl {version} present: NcclId::new() -> {result:?}");
        assert!(version >= 2_0000, "unexpected NCCL version code {version}");
        return;
    }
    assert!(matches!(nccl_version(), Err(NcclError::NoLibrary(_))));
    match result {
        Err(NcclError::NoLibrary(msg)) => assert!(msg.contains("libnccl"), "{msg}"),
        other => panic!("expected NoLibrary without libnccl, got {other:?}"),
    }
}

#[test]
fn selfcheck_world_size_one_or_typed_error() {
    let timeout = Duration::from_secs(120);
    if cuda_device_count() == 0 || !nccl_library_present() {
        let result = selfcheck_world_size_one(0, timeout);
        match result {
            Err(NcclError::NoLibrary(_) | NcclError::NoDevice(_)) => {}
            other => panic!("expected NoLibrary/NoDevice without a GPU or libnccl, got {other:?}"),
        }
        println!("SKIPPED: no CUDA device (or no libnccl)");
        return;
    }
    let check = selfcheck_world_size_one(0, timeout).expect("self-check runs on GPU 0");
    println!(
        "NCCL {} self-check: ok={} elements={} f32 all-reduce {} us, bf16 {} us",
        check.nccl_version, check.ok, check.elements, check.micros, check.bf16_micros
    );
    assert!(check.ok, "self-check failures: {:?}", check.failures);
    assert_eq!(check.elements, SELFCHECK_ELEMENTS);
}

#[test]
fn selfcheck_on_a_missing_device_is_an_error() {
    let missing = cuda_device_count() + 1000;
    match selfcheck_world_size_one(missing, Duration::from_secs(5)) {
        Err(NcclError::NoLibrary(_) | NcclError::NoDevice(_)) => {}
        other => panic!("expected NoLibrary/NoDevice for device {missing}, got {other:?}"),
    }
}
