import Foundation
import ObjectStore

#if canImport(Glibc)
import Glibc
#endif

/// A real S3 store for one test: the single-node Ceph RADOS Gateway of scripts/s3-server.sh, its data under the
/// test's directory, stopped whatever happens (`stop()` in the test's `defer`).
final class S3Store {
    static let script = IT.repositoryRoot + "/scripts/s3-server.sh"
    /// Ceph's daemons from Debian's packages (`make deps`).
    static let available = ["/usr/bin/ceph-mon", "/usr/bin/ceph-osd", "/usr/bin/radosgw"].allSatisfy {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    let directory: String
    /// The bucket made with object lock, new versions kept this many days (governance mode).
    let objectLockDays: Int?
    private(set) var values: [String: String] = [:]

    init(directory: String, objectLockDays: Int? = nil) throws {
        self.directory = directory
        self.objectLockDays = objectLockDays
        try start()
    }

    /// Starts the store (again: the data stays) and reads the lines the script prints.
    func start() throws {
        let result = try run(
            "/bin/bash", [Self.script, "start", directory], timeout: 180,
            environment: objectLockDays.map { ["S3_SERVER_OBJECT_LOCK_DAYS": String($0)] } ?? [:], check: false)
        guard result.status == 0 else {
            stop()
            throw TestFailure("scripts/s3-server.sh start failed: \(result.error)\(result.output)")
        }
        for line in result.output.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        for name in ["S3_ENDPOINT", "S3_TLS_ENDPOINT", "S3_CA_FILE", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        where values[name] == nil {
            stop()
            throw TestFailure("scripts/s3-server.sh start printed no \(name): \(result.output)")
        }
    }

    /// Stops the daemons; never throws (it runs in cleanup).
    func stop() { _ = try? run("/bin/bash", [Self.script, "stop", directory], timeout: 60, check: false) }

    var endpoint: String { values["S3_ENDPOINT"]! }
    var tlsEndpoint: String { values["S3_TLS_ENDPOINT"]! }
    var caFile: String { values["S3_CA_FILE"]! }
    var bucket: String { values["S3_BUCKET"]! }
    var credentials: AWSCredentials {
        AWSCredentials(accessKeyID: values["AWS_ACCESS_KEY_ID"]!, secretAccessKey: values["AWS_SECRET_ACCESS_KEY"]!)
    }
    /// What a walship process needs in its environment to reach the store.
    var environment: [String: String] {
        ["AWS_ACCESS_KEY_ID": credentials.accessKeyID, "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey]
    }

    /// The bucket's object versions and delete markers under `prefix` (ListObjectVersions, through curl's SigV4: the
    /// archive's client never lists versions): the keys that still have a stored version.
    func keysWithStoredVersions(prefix: String) throws -> Set<String> {
        let listing = try run(
            "/usr/bin/curl",
            [
                "-s", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                "\(credentials.accessKeyID):\(credentials.secretAccessKey)", "-H",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                // The whole bucket: curl signs a query with more than one parameter wrongly.
                "\(endpoint)/\(bucket)?versions=",
            ])
        let versions = listing.output.components(separatedBy: "<Version>").dropFirst()
        return Set(
            versions.compactMap { entry -> String? in
                guard let end = entry.range(of: "</Key>") else { return nil }
                let key = String(entry[..<end.lowerBound].dropFirst("<Key>".count))
                return key.hasPrefix(prefix) ? key : nil
            })
    }

    /// Runs `body` with a client that is shut down afterwards, whether `body` throws or not.
    func withClient<T>(_ body: (S3Client) async throws -> T) async throws -> T {
        let client = try self.client()
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    func client(tls: Bool = false, caFile: String? = nil, credentials: AWSCredentials? = nil) throws -> S3Client {
        try S3Client(
            .init(
                endpoint: try S3Endpoint(parsing: tls ? tlsEndpoint : endpoint), bucket: bucket, region: "us-east-1",
                credentials: credentials ?? self.credentials, caFile: caFile, requestTimeout: .seconds(30),
                connectTimeout: .seconds(5)))
    }
}
