import Foundation
import ObjectStore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The S3 client against a real Ceph RADOS Gateway (scripts/s3-server.sh), started and stopped by each test.
@Suite(.serialized, .enabled(if: S3Store.available, "Ceph (ceph-mon, ceph-osd, radosgw) is required: make deps"))
struct S3ClientTests {
    static func randomBytes(_ count: Int) -> Data {
        var generator = SystemRandomNumberGenerator()
        let words = (0...(count / 8)).map { _ in generator.next() as UInt64 }
        return words.withUnsafeBytes { Data($0.prefix(count)) }
    }

    @Test func objectsRoundTripOverHTTPAndTLS() async throws {
        let directory = "/tmp/walship-it-s3-client-\(getpid())"
        _ = try? run("/bin/rm", ["-rf", directory])
        let store = try S3Store(directory: directory)
        defer {
            store.stop()
            _ = try? run("/bin/rm", ["-rf", directory], check: false)
        }
        for tls in [false, true] {
            let client = try store.client(tls: tls, caFile: tls ? store.caFile : nil)
            do {
                let prefix = "round-trip-\(tls ? "tls" : "http")/"
                let body = Self.randomBytes(100_003)
                let key = prefix + "7301/wal/000000010000000000000001.lz4"
                let etag = try await client.putObject(key: key, body: body, metadata: ["sha256": "abc"])
                #expect(etag == S3Client.expectedETag(of: body, partSize: nil))
                let head = try #require(try await client.headObject(key: key))
                #expect(head.size == 100_003)
                #expect(head.etag == etag)
                #expect(head.metadata["sha256"] == "abc")
                #expect(try await client.getObject(key: key) == body)
                // A key with characters that need encoding in the path and the signature.
                let odd = prefix + "a b+c=d&e/ü.history"
                try await client.putObject(key: odd, body: Data("x".utf8))
                #expect(try await client.getObject(key: odd) == Data("x".utf8))
                // ListObjectsV2 with continuation: 7 objects in pages of 2.
                for index in 0..<5 { try await client.putObject(key: prefix + "page/\(index)", body: Data([UInt8(index)])) }
                let first = try await client.listObjects(prefix: prefix, maxKeys: 2)
                #expect(first.objects.count == 2)
                #expect(first.nextContinuationToken != nil)
                let all = try await client.listAllObjects(prefix: prefix, pageSize: 2)
                #expect(all.count == 7)
                #expect(all.map(\.key).contains(odd))
                #expect(all.first { $0.key == key }?.size == 100_003)
                try await client.deleteObject(key: key)
                #expect(try await client.headObject(key: key) == nil)
                // A missing key is the store's NoSuchKey, told as such.
                do {
                    _ = try await client.getObject(key: key)
                    Issue.record("GetObject of a deleted key succeeded")
                } catch let error as S3Error {
                    #expect(error.code == "NoSuchKey")
                    #expect(error.description.contains("GetObject \(key): the store answered HTTP 404 NoSuchKey"))
                }
            } catch {
                try? await client.shutdown()
                throw error
            }
            try await client.shutdown()
        }
    }

    @Test func multipartUploadsCompleteAbortAndFailClearly() async throws {
        let directory = "/tmp/walship-it-s3-multipart-\(getpid())"
        _ = try? run("/bin/rm", ["-rf", directory])
        let store = try S3Store(directory: directory)
        defer {
            store.stop()
            _ = try? run("/bin/rm", ["-rf", directory], check: false)
        }
        let client = try store.client()
        do {
            let body = Self.randomBytes(12 << 20 + 12345)
            let key = "multipart/base/20261207T210000/base.tar.lz4"
            let etag = try await client.putObjectMultipart(
                key: key, body: body, partSize: 5 << 20, metadata: ["sha256": SigV4Signer.payloadHash(body)])
            #expect(etag == S3Client.expectedETag(of: body, partSize: 5 << 20))
            #expect(etag.hasSuffix("-3"))
            let head = try #require(try await client.headObject(key: key))
            #expect(head.size == Int64(body.count))
            #expect(head.etag == etag)
            #expect(head.metadata["sha256"] == SigV4Signer.payloadHash(body))
            #expect(try await client.getObject(key: key) == body)

            // Begun and aborted: no object, no upload left behind.
            let aborted = "multipart/aborted"
            let id = try await client.createMultipartUpload(key: aborted)
            _ = try await client.uploadPart(key: aborted, uploadID: id, partNumber: 1, body: body.prefix(5 << 20))
            #expect(try await client.listMultipartUploads(prefix: "multipart/").map(\.uploadID) == [id])
            try await client.abortMultipartUpload(key: aborted, uploadID: id)
            #expect(try await client.listMultipartUploads(prefix: "multipart/").isEmpty)
            #expect(try await client.headObject(key: aborted) == nil)

            // Completing with a part the store does not have fails with the store's reason.
            let bogus = "multipart/bogus"
            let bogusID = try await client.createMultipartUpload(key: bogus)
            do {
                try await client.completeMultipartUpload(
                    key: bogus, uploadID: bogusID, parts: [(1, "00000000000000000000000000000000")])
                Issue.record("completing with an unknown part succeeded")
            } catch let error as S3Error {
                #expect(error.code == "InvalidPart", "\(error)")
            }
            try await client.abortMultipartUpload(key: bogus, uploadID: bogusID)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    @Test func wrongCredentialsUnknownBucketsAndUntrustedCertificatesAreRefusedClearly() async throws {
        let directory = "/tmp/walship-it-s3-refusals-\(getpid())"
        _ = try? run("/bin/rm", ["-rf", directory])
        let store = try S3Store(directory: directory)
        defer {
            store.stop()
            _ = try? run("/bin/rm", ["-rf", directory], check: false)
        }
        func expectRefusal(_ client: S3Client, _ check: (S3Error) -> Bool) async throws {
            do {
                try await client.putObject(key: "k", body: Data("x".utf8))
                Issue.record("the upload was accepted")
            } catch let error as S3Error {
                #expect(check(error), "\(error)")
            }
            try await client.shutdown()
        }
        let wrongSecret = AWSCredentials(accessKeyID: store.credentials.accessKeyID, secretAccessKey: "not-the-secret")
        try await expectRefusal(try store.client(credentials: wrongSecret)) {
            $0.code == "SignatureDoesNotMatch" && $0.description.contains("check the secret access key")
        }
        let unknownKey = AWSCredentials(accessKeyID: "NOSUCHKEY", secretAccessKey: "x")
        try await expectRefusal(try store.client(credentials: unknownKey)) { $0.code == "InvalidAccessKeyId" }
        // TLS is verified: without the store's CA the system's roots do not trust its certificate.
        try await expectRefusal(try store.client(tls: true)) {
            if case .transport(let reason) = $0.kind { return reason.contains("--archive-ca") }
            return false
        }
        let other = try S3Client(
            .init(
                endpoint: try S3Endpoint(parsing: store.endpoint), bucket: "no-such-bucket", region: "us-east-1",
                credentials: store.credentials))
        try await expectRefusal(other) { $0.code == "NoSuchBucket" }
        // Nothing listens: a transport error, not a hang.
        let closed = try S3Client(
            .init(
                endpoint: try S3Endpoint(parsing: "http://127.0.0.1:\(IT.freePort())"), bucket: "b", region: "us-east-1",
                credentials: store.credentials, connectTimeout: .seconds(2)))
        try await expectRefusal(closed) {
            if case .transport = $0.kind { return true }
            return false
        }
    }
}
