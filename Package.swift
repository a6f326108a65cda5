// swift-tools-version:6.0
import PackageDescription

/// `walship --version`'s build: the commit and date the Makefile passes in WALSHIP_BUILD, "unknown" from a plain
/// `swift build`. Only characters that need no escaping in a C string literal are kept.
let buildIdentity = String(
    (Context.environment["WALSHIP_BUILD"] ?? "").filter { $0.isASCII && ($0.isLetter || $0.isNumber || " ._:+-/".contains($0)) }
        .prefix(120))

let package = Package(
    name: "walship",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "walship", targets: ["walship"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", exact: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .target(name: "CCRC32C"),
        .target(
            name: "CBuildIdentity",
            cSettings: [.define("WALSHIP_BUILD", to: "\"\(buildIdentity.isEmpty ? "unknown" : buildIdentity)\"")]),
        // The one way walship starts other programs (pg_ctl, lz4 and tar, chown, --alert-command).
        .target(
            name: "ChildProcess",
            dependencies: [
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "WALCore", dependencies: ["CCRC32C"]),
        .target(name: "PGProtocol", dependencies: ["WALCore"]),
        .target(
            name: "PGReplication",
            dependencies: [
                "CLibPQ", "PGProtocol", "WALCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(name: "LZ4Codec", dependencies: ["CLZ4", .product(name: "NIOCore", package: "swift-nio")]),
        .target(
            name: "ShipProtocol",
            dependencies: ["LZ4Codec", "WALCore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "ShipTLS",
            dependencies: [
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // The S3 API: SigV4 signing and the XML it answers with (pure), and the client over async-http-client.
        .target(
            name: "ObjectStore",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The archive's client-side encryption: the keyring and the chunked AES-256-GCM object format (pure).
        .target(name: "ArchiveCrypto", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "Spool",
            dependencies: ["WALCore", "LZ4Codec", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "WalSenderServer",
            dependencies: [
                "Spool", "WALCore", "PGProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(name: "StatusModel", dependencies: ["WALCore"]),
        // The archive tier: what of the spool goes to the object store next (a pure state machine) and the
        // receiver's uploader that carries it out.
        .target(
            name: "Archive",
            dependencies: [
                "ObjectStore", "ArchiveCrypto", "Spool", "WALCore", "StatusModel", "LZ4Codec",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Monitor",
            dependencies: [
                "StatusModel", "WALCore", "ChildProcess",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Sender",
            dependencies: [
                "PGReplication", "ShipProtocol", "LZ4Codec", "ShipTLS", "WALCore", "StatusModel", "Spool",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "Receiver",
            dependencies: [
                "ShipProtocol", "ShipTLS", "Spool", "WALCore", "StatusModel",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "WalshipConfig",
            dependencies: [
                "WALCore",
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(
            name: "FuzzHarness",
            dependencies: ["ShipProtocol", "WALCore", "WalSenderServer", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .executableTarget(name: "walship-fuzz", dependencies: ["FuzzHarness"]),
        // What the commands do, apart from parsing and printing: restore, drill, promote, check, and running the
        // long-lived ones until stopped.
        .target(
            name: "Operations",
            dependencies: [
                "Spool", "StatusModel", "PGReplication", "WALCore", "Sender", "ShipTLS", "Monitor", "ChildProcess",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "walship",
            dependencies: [
                "Sender", "Receiver", "Spool", "WALCore", "Monitor", "StatusModel", "WalSenderServer", "ShipTLS", "WalshipConfig",
                "PGReplication", "ShipProtocol", "Operations", "CBuildIdentity", "Archive", "ArchiveCrypto", "ObjectStore",
                "LZ4Codec", "ChildProcess",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(name: "WALCoreTests", dependencies: ["WALCore", "WALTestSupport"]),
        .testTarget(
            name: "WalshipCommandTests",
            dependencies: [
                "walship", "WalshipConfig", "ArchiveCrypto", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "ChildProcessTests", dependencies: ["ChildProcess"]),
        .testTarget(
            name: "ObjectStoreTests",
            dependencies: [
                "ObjectStore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .testTarget(
            name: "ArchiveTests",
            dependencies: [
                "Archive", "ObjectStore", "StatusModel", "ArchiveCrypto", "Spool", "WALCore", "LZ4Codec", "WALTestSupport",
            ]),
        .testTarget(name: "ArchiveCryptoTests", dependencies: ["ArchiveCrypto"]),
        .testTarget(name: "LZ4CodecTests", dependencies: ["LZ4Codec", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(
            name: "ShipProtocolTests",
            dependencies: [
                "ShipProtocol", "LZ4Codec", "WALCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        // Synthetic WAL with valid page headers, for the test targets that store or serve it.
        .target(name: "WALTestSupport", dependencies: ["WALCore"], path: "Tests/WALTestSupport"),
        .testTarget(
            name: "SpoolTests",
            dependencies: [
                "Spool", "WALCore", "WALTestSupport", "LZ4Codec",
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        .testTarget(name: "PGProtocolTests", dependencies: ["PGProtocol", "WALCore"]),
        .testTarget(name: "PGReplicationTests", dependencies: ["PGReplication", "PGProtocol", "WALCore"]),
        // A receiver's status document, for the tests of the model and of what publishes it.
        .target(name: "StatusTestSupport", dependencies: ["StatusModel"], path: "Tests/StatusTestSupport"),
        .testTarget(name: "StatusModelTests", dependencies: ["StatusModel", "StatusTestSupport", "WALCore"]),
        .testTarget(name: "MonitorTests", dependencies: ["Monitor", "StatusModel", "StatusTestSupport"]),
        .testTarget(name: "SenderTests", dependencies: ["Sender", "Spool", "WALCore", "ShipProtocol"]),
        .testTarget(
            name: "ReceiverTests",
            dependencies: [
                "Receiver", "ShipProtocol", "StatusModel", "WALCore", .product(name: "NIOEmbedded", package: "swift-nio"),
            ]),
        .testTarget(name: "FuzzReplayTests", dependencies: ["FuzzHarness"]),
        .testTarget(
            name: "WalshipConfigTests",
            dependencies: ["WalshipConfig", "WALCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(
            name: "ShipTLSTests",
            dependencies: [
                "ShipTLS", .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .testTarget(
            name: "WalSenderServerTests",
            dependencies: [
                "WalSenderServer", "WALCore", "WALTestSupport", "Spool", "PGProtocol",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "OperationsTests",
            dependencies: [
                "Operations", "StatusModel", "WALCore", "Sender", "Spool", .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // What a release carries beside the program (the licence), read from the checkout.
        .testTarget(name: "RepositoryFilesTests"),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["WALCore", "ShipProtocol", "ObjectStore", "ArchiveCrypto"],
            path: "Integration"
        ),
    ]
)
