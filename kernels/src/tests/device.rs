use crate::{check_device, Device, KernelError};

#[test]
fn device_parsing_and_display() {
    assert_eq!("cpu".parse::<Device>().expect("cpu"), Device::Cpu);
    assert_eq!(" CPU ".parse::<Device>().expect("cpu"), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().expect("cuda"), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().expect("cuda:1"), Device::Cuda(1));
    for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0"] {
        let err = bad.parse::<Device>().expect_err(bad);
        assert!(matches!(err, KernelError::BadDevice(_)), "{bad}: {err}");
    }
    for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(3)] {
        assert_eq!(d.to_string().parse::<Device>().expect("round trip"), d);
    }
}

/// Devices this build can use: none without the feature, the GPUs present with it.
fn usable_gpus() -> usize {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

#[test]
fn check_device_cpu_ok_cuda_is_a_typed_error() {
    check_device(Device::Cpu).expect("cpu always works");
    for ordinal in [0, 1, 7] {
        if ordinal < usable_gpus() {
            check_device(Device::Cuda(ordinal)).expect("a GPU that is present");
            continue;
        }
        let err = check_device(Device::Cuda(ordinal)).expect_err("no such CUDA device");
        let KernelError::CudaUnavailable(msg) = &err else {
            panic!("expected CudaUnavailable, got {err:?}");
        };
        if cfg!(not(feature = "cuda")) {
            assert_eq!(
                msg,
                "weft was built without the `cuda` feature; rebuild with --features cuda"
            );
        }
        assert!(err.to_string().contains("cuda"), "{err}");
    }
}
