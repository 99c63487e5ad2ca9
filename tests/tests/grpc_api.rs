//! The control socket speaks plain gRPC: a tonic client calls the control service, the standard
//! health service and server reflection, as a generic gRPC tool would.

use p2p_proto::control::v1 as pb;
use p2p_proto::control::v1::control_service_client::ControlServiceClient;
use p2p_tests::Daemon;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_health_and_reflection_over_the_socket() {
    let d = p2p_tests::start(&[]).await;
    let channel = p2p_proto::uds::connect(&d.dirs.socket)
        .await
        .expect("connect");

    let status = ControlServiceClient::new(channel.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    assert_eq!(status.pid, d.pid);
    assert!(!status.device_id.is_empty());

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "p2p.control.v1.ControlService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["p2p.control.v1.ControlService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "reflection lists {want}: {names:?}"
        );
    }

    // Reflection also describes the control service's schema.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "p2p.control.v1.ControlService".into(),
        )),
    };
    let mut stream = reflection_client(&d)
        .await
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(resp.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{resp:?}"
    );
}

async fn reflection_client(d: &Daemon) -> ServerReflectionClient<tonic::transport::Channel> {
    ServerReflectionClient::new(p2p_proto::uds::connect(&d.dirs.socket).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1alpha_reflection_is_served_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaReq;
    let d = p2p_tests::start(&[]).await;
    let channel = p2p_proto::uds::connect(&d.dirs.socket).await.unwrap();
    let req = AlphaRequest {
        host: String::new(),
        message_request: Some(AlphaReq::ListServices(String::new())),
    };
    let mut stream = Alpha::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha")
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
}
