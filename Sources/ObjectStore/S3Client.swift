import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Where the archive lives: an endpoint (scheme, host, port, and a path prefix some gateways sit under), a bucket
/// addressed path-style (`http://host:port/bucket/key`, what on-premises stores addressed by IP need) and a region
/// for the signature.
public struct S3Endpoint: Sendable, Equatable {
    public var scheme: String
    public var host: String
    public var port: Int
    public var basePath: String

    /// Parses `http(s)://host[:port][/path]`. Anything else is refused with what was wrong.
    public init(parsing text: String) throws(S3ConfigurationError) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else {
            throw S3ConfigurationError(
                "the archive endpoint '\(text)' is not an http:// or https:// URL",
                hint: "give the store's address, e.g. https://s3.example.org or http://127.0.0.1:7480")
        }
        guard components.query == nil, components.user == nil, components.password == nil else {
            throw S3ConfigurationError(
                "the archive endpoint '\(text)' carries a query or credentials",
                hint: "give only scheme, host, port and path; credentials come from the environment or a file")
        }
        self.scheme = scheme
        self.host = host
        self.port = components.port ?? (scheme == "https" ? 443 : 80)
        var path = components.path
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
    }

    public var isTLS: Bool { scheme == "https" }

    /// The `Host` header: the port only where it is not the scheme's default (what the request line implies, and
    /// so what the store signs against).
    public var hostHeader: String {
        let bracketed = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return (isTLS && port == 443) || (!isTLS && port == 80) ? bracketed : "\(bracketed):\(port)"
    }

    public var description: String { "\(scheme)://\(hostHeader)\(basePath)" }
}

/// A configuration the client cannot work with (a bad endpoint, no credentials, an unreadable CA file).
public struct S3ConfigurationError: Error, Equatable, CustomStringConvertible {
    public var problem: String
    public var hint: String
    public init(_ problem: String, hint: String) {
        self.problem = problem
        self.hint = hint
    }
    public var description: String { "\(problem) (\(hint))" }
}

/// What the store answered when it refused, or why no answer came. The description is the message an operator
/// reads: the operation, the key, the store's code and message, and a hint for the common codes.
public struct S3Error: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// The store answered with an error status (or a 200 whose body was an `<Error>`).
        case store(status: Int, code: String, message: String, requestID: String?)
        /// No answer: connection refused, timeout, TLS failure.
        case transport(String)
        /// An answer that is not what the operation returns (malformed XML, a missing field, a wrong size).
        case unexpectedAnswer(String)
    }

    public var operation: String
    public var key: String
    public var kind: Kind

    public init(operation: String, key: String, kind: Kind) {
        self.operation = operation
        self.key = key
        self.kind = kind
    }

    /// The store's error code (`NoSuchKey`, `BadDigest`, ...) when it answered with one.
    public var code: String? {
        if case .store(_, let code, _, _) = kind { return code }
        return nil
    }

    public var status: Int? {
        if case .store(let status, _, _, _) = kind { return status }
        return nil
    }

    public var description: String {
        let target = key.isEmpty ? "" : " \(key)"
        switch kind {
        case .store(let status, let code, let message, let requestID):
            let request = requestID.map { ", request id \($0)" } ?? ""
            let hint = Self.hints[code].map { " (\($0))" } ?? ""
            return "\(operation)\(target): the store answered HTTP \(status) \(code): \(message)\(request)\(hint)"
        case .transport(let reason):
            return "\(operation)\(target): no answer from the store: \(reason)"
        case .unexpectedAnswer(let reason):
            return "\(operation)\(target): unexpected answer from the store: \(reason)"
        }
    }

    static let hints: [String: String] = [
        "SignatureDoesNotMatch": "check the secret access key and the region (--archive-region)",
        "InvalidAccessKeyId": "the access key id is unknown to this store",
        "AccessDenied": "the credentials may not do this in this bucket",
        "NoSuchBucket": "create the bucket first, or check the bucket name in --archive",
        "BadDigest": "the body changed on the way; the upload is retried",
        "RequestTimeTooSkewed": "this host's clock is off; synchronise it (NTP)",
        "XAmzContentSHA256Mismatch": "the body changed on the way; the upload is retried",
        "NoSuchUpload": "the multipart upload was aborted or completed already",
    ]
}

/// One object as a listing or a HEAD shows it.
public struct ObjectInfo: Sendable, Equatable {
    public var key: String
    public var size: Int64
    /// Without the quotes the store puts around it.
    public var etag: String
    public var lastModified: String?
    /// `x-amz-meta-*` headers (HEAD only), names without the prefix, lower case.
    public var metadata: [String: String]

    public init(key: String, size: Int64, etag: String, lastModified: String? = nil, metadata: [String: String] = [:]) {
        self.key = key
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
        self.metadata = metadata
    }
}

/// One page of ListObjectsV2.
public struct ObjectListing: Sendable, Equatable {
    public var objects: [ObjectInfo]
    /// Set when more keys follow; pass it back as `continuationToken`.
    public var nextContinuationToken: String?
    /// With a delimiter: the key prefixes up to it, each listed once instead of the keys below it.
    public var commonPrefixes: [String] = []
}

/// An S3 client for what the archive needs, over async-http-client: path-style requests signed with SigV4, every
/// body's SHA-256 signed (`x-amz-content-sha256`) and its MD5 sent as `Content-MD5` so the store verifies what it
/// stores. TLS verification is on (the system's roots, or the given CA file alone). Errors come from the XML body.
public final class S3Client: Sendable {
    public struct Configuration: Sendable {
        public var endpoint: S3Endpoint
        public var bucket: String
        public var region: String
        public var credentials: AWSCredentials
        /// A PEM file of the CA that signed the store's certificate; nil: the system's trust store.
        public var caFile: String?
        public var requestTimeout: TimeAmount
        public var connectTimeout: TimeAmount

        public init(
            endpoint: S3Endpoint, bucket: String, region: String, credentials: AWSCredentials, caFile: String? = nil,
            requestTimeout: TimeAmount = .seconds(120), connectTimeout: TimeAmount = .seconds(10)
        ) {
            self.endpoint = endpoint
            self.bucket = bucket
            self.region = region
            self.credentials = credentials
            self.caFile = caFile
            self.requestTimeout = requestTimeout
            self.connectTimeout = connectTimeout
        }
    }

    public let configuration: Configuration
    private let http: HTTPClient
    private let signer: SigV4Signer

    /// The largest body read into memory (a GET of one object, an XML answer).
    public static let maximumBodyBytes = 5 << 30

    public init(_ configuration: Configuration) throws(S3ConfigurationError) {
        guard !configuration.bucket.isEmpty, !configuration.bucket.contains("/") else {
            throw S3ConfigurationError(
                "the bucket name '\(configuration.bucket)' is not valid", hint: "give it as s3://BUCKET/PREFIX")
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile = configuration.caFile {
            guard FileManager.default.isReadableFile(atPath: caFile) else {
                throw S3ConfigurationError(
                    "the archive's CA file \(caFile) cannot be read", hint: "give a PEM file readable by this user")
            }
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            } catch {
                throw S3ConfigurationError(
                    "the archive's CA file \(caFile) holds no PEM certificate (\(error))",
                    hint: "give the PEM certificate of the CA that signed the store's certificate")
            }
        }
        var http = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: configuration.connectTimeout, read: configuration.requestTimeout))
        http.httpVersion = .http1Only
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        self.configuration = configuration
        self.signer = SigV4Signer(credentials: configuration.credentials, region: configuration.region)
    }

    /// Ends the connection pool. Call once, when done.
    public func shutdown() async throws { try await http.shutdown() }

    // MARK: Objects

    /// PutObject. Returns the ETag the store gave (the body's MD5 for a single-part object).
    @discardableResult
    public func putObject(
        key: String, body: Data, contentType: String = "application/octet-stream", metadata: [String: String] = [:]
    ) async throws -> String {
        let response = try await send(
            "PutObject", key: key, method: .PUT, body: body,
            headers: [("Content-Type", contentType)] + Self.metadataHeaders(metadata))
        return Self.unquoted(response.headers.first(name: "etag") ?? "")
    }

    /// HeadObject: nil when there is no such object.
    public func headObject(key: String) async throws -> ObjectInfo? {
        let response: Answer
        do {
            response = try await send("HeadObject", key: key, method: .HEAD)
        } catch let error as S3Error where error.status == 404 {
            return nil
        }
        guard let length = response.headers.first(name: "content-length").flatMap({ Int64($0) }) else {
            throw S3Error(operation: "HeadObject", key: key, kind: .unexpectedAnswer("no Content-Length"))
        }
        var metadata: [String: String] = [:]
        for (name, value) in response.headers where name.lowercased().hasPrefix("x-amz-meta-") {
            metadata[String(name.lowercased().dropFirst("x-amz-meta-".count))] = value
        }
        return ObjectInfo(
            key: key, size: length, etag: Self.unquoted(response.headers.first(name: "etag") ?? ""),
            lastModified: response.headers.first(name: "last-modified"), metadata: metadata)
    }

    /// GetObject, whole.
    public func getObject(key: String) async throws -> Data {
        Data(try await send("GetObject", key: key, method: .GET).body.readableBytesView)
    }

    /// GetObject of the bytes in `range` (a large object read piece by piece, never held whole).
    public func getObject(key: String, range: Range<Int64>) async throws -> Data {
        guard !range.isEmpty else { return Data() }
        let answer = try await send(
            "GetObject", key: key, method: .GET, headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")])
        let data = Data(answer.body.readableBytesView)
        guard data.count == range.count else {
            throw S3Error(
                operation: "GetObject", key: key,
                kind: .unexpectedAnswer("\(data.count) bytes for the range \(range.lowerBound)..<\(range.upperBound)"))
        }
        return data
    }

    /// What a DeleteObject did: removed the object, or, in a bucket that keeps versions (versioning, object lock),
    /// hid it behind a delete marker while its data stays as an older version.
    public enum DeleteOutcome: Sendable, Equatable {
        case deleted
        case deleteMarker
    }

    @discardableResult
    public func deleteObject(key: String) async throws -> DeleteOutcome {
        let answer = try await send("DeleteObject", key: key, method: .DELETE)
        return answer.headers.first(name: "x-amz-delete-marker")?.lowercased() == "true" ? .deleteMarker : .deleted
    }

    /// One page of ListObjectsV2 under `prefix`.
    public func listObjects(
        prefix: String, continuationToken: String? = nil, maxKeys: Int? = nil, delimiter: String? = nil
    ) async throws
        -> ObjectListing
    {
        var query: [(name: String, value: String)] = [("list-type", "2"), ("prefix", prefix)]
        if let delimiter { query.append(("delimiter", delimiter)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        if let maxKeys { query.append(("max-keys", String(maxKeys))) }
        let answer = try await send("ListObjectsV2", key: "", method: .GET, query: query)
        let root = try Self.xml(answer.body, operation: "ListObjectsV2", key: prefix)
        let objects = try root.children("Contents").map { entry in
            guard let key = entry.value("Key"), let size = entry.value("Size").flatMap({ Int64($0) }) else {
                throw S3Error(
                    operation: "ListObjectsV2", key: prefix, kind: .unexpectedAnswer("an entry without Key or Size"))
            }
            return ObjectInfo(
                key: key, size: size, etag: Self.unquoted(entry.value("ETag") ?? ""),
                lastModified: entry.value("LastModified"))
        }
        let truncated = root.value("IsTruncated") == "true"
        let next = truncated ? root.value("NextContinuationToken") : nil
        if truncated && next == nil {
            throw S3Error(
                operation: "ListObjectsV2", key: prefix, kind: .unexpectedAnswer("truncated without a continuation token"))
        }
        return ObjectListing(
            objects: objects, nextContinuationToken: next,
            commonPrefixes: root.children("CommonPrefixes").compactMap { $0.value("Prefix") })
    }

    /// The key prefixes under `prefix` up to the next `delimiter` (the "directories" one level down), following
    /// continuation tokens.
    public func listCommonPrefixes(prefix: String, delimiter: String = "/") async throws -> [String] {
        try await everyPage { try await listObjects(prefix: prefix, continuationToken: $0, delimiter: delimiter) }
            .flatMap(\.commonPrefixes)
    }

    /// Every object under `prefix`, following continuation tokens.
    public func listAllObjects(prefix: String, pageSize: Int? = nil) async throws -> [ObjectInfo] {
        try await everyPage { try await listObjects(prefix: prefix, continuationToken: $0, maxKeys: pageSize) }
            .flatMap(\.objects)
    }

    /// The pages of a listing, each asked with the previous one's continuation token until none is left.
    private func everyPage(_ page: (String?) async throws -> ObjectListing) async throws -> [ObjectListing] {
        var pages: [ObjectListing] = []
        var token: String?
        repeat {
            let next = try await page(token)
            pages.append(next)
            token = next.nextContinuationToken
        } while token != nil
        return pages
    }

    // MARK: Multipart

    /// CreateMultipartUpload: the upload id.
    public func createMultipartUpload(
        key: String, contentType: String = "application/octet-stream", metadata: [String: String] = [:]
    ) async throws -> String {
        let answer = try await send(
            "CreateMultipartUpload", key: key, method: .POST, query: [("uploads", "")],
            headers: [("Content-Type", contentType)] + Self.metadataHeaders(metadata))
        guard let id = try Self.xml(answer.body, operation: "CreateMultipartUpload", key: key).value("UploadId"),
            !id.isEmpty
        else {
            throw S3Error(operation: "CreateMultipartUpload", key: key, kind: .unexpectedAnswer("no UploadId"))
        }
        return id
    }

    /// UploadPart (numbers from 1): the part's ETag, which completion needs.
    public func uploadPart(key: String, uploadID: String, partNumber: Int, body: Data) async throws -> String {
        let answer = try await send(
            "UploadPart", key: key, method: .PUT, query: [("partNumber", String(partNumber)), ("uploadId", uploadID)],
            body: body)
        guard let etag = answer.headers.first(name: "etag") else {
            throw S3Error(operation: "UploadPart", key: key, kind: .unexpectedAnswer("no ETag for part \(partNumber)"))
        }
        return Self.unquoted(etag)
    }

    /// CompleteMultipartUpload. The store may answer 200 and still fail (the error then comes in the body, possibly
    /// after whitespace it sent to keep the connection alive): only a `CompleteMultipartUploadResult` counts.
    @discardableResult
    public func completeMultipartUpload(
        key: String, uploadID: String, parts: [(number: Int, etag: String)]
    ) async throws
        -> String
    {
        var xml = "<CompleteMultipartUpload>"
        for part in parts.sorted(by: { $0.number < $1.number }) {
            xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\"\(part.etag)\"</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        let answer = try await send(
            "CompleteMultipartUpload", key: key, method: .POST, query: [("uploadId", uploadID)], body: Data(xml.utf8),
            headers: [("Content-Type", "application/xml")])
        let root = try Self.xml(answer.body, operation: "CompleteMultipartUpload", key: key)
        guard root.name == "CompleteMultipartUploadResult" else {
            throw S3Error(
                operation: "CompleteMultipartUpload", key: key,
                kind: .unexpectedAnswer("a <\(root.name)> where CompleteMultipartUploadResult belongs"))
        }
        let etag = Self.unquoted(root.value("ETag") ?? "")
        guard etag.isEmpty else { return etag }
        // Ceph RGW 16 answers an empty <ETag/>; the object's own HEAD has it.
        guard let head = try await headObject(key: key) else {
            throw S3Error(
                operation: "CompleteMultipartUpload", key: key, kind: .unexpectedAnswer("the completed object is missing"))
        }
        return head.etag
    }

    public func abortMultipartUpload(key: String, uploadID: String) async throws {
        _ = try await send("AbortMultipartUpload", key: key, method: .DELETE, query: [("uploadId", uploadID)])
    }

    /// Multipart uploads begun and neither completed nor aborted under `prefix` (key, upload id): what a process
    /// killed in the middle of one leaves.
    public func listMultipartUploads(prefix: String) async throws -> [(key: String, uploadID: String)] {
        var found: [(key: String, uploadID: String)] = []
        var keyMarker: String?
        var uploadMarker: String?
        repeat {
            var query: [(name: String, value: String)] = [("uploads", ""), ("prefix", prefix)]
            if let keyMarker { query.append(("key-marker", keyMarker)) }
            if let uploadMarker { query.append(("upload-id-marker", uploadMarker)) }
            let answer = try await send("ListMultipartUploads", key: "", method: .GET, query: query)
            let root = try Self.xml(answer.body, operation: "ListMultipartUploads", key: prefix)
            for upload in root.children("Upload") {
                if let key = upload.value("Key"), let id = upload.value("UploadId") { found.append((key, id)) }
            }
            if root.value("IsTruncated") == "true" {
                keyMarker = root.value("NextKeyMarker")
                uploadMarker = root.value("NextUploadIdMarker")
                if keyMarker == nil { break }
            } else {
                keyMarker = nil
            }
        } while keyMarker != nil
        return found
    }

    /// Uploads `body` in parts of `partSize` bytes (at least 5 MiB, S3's minimum for all but the last part), each
    /// with its Content-MD5; aborts the upload when any step fails, so no half object stays behind.
    @discardableResult
    public func putObjectMultipart(
        key: String, body: Data, partSize: Int, metadata: [String: String] = [:]
    ) async throws
        -> String
    {
        precondition(partSize >= 5 << 20, "S3 parts but the last are at least 5 MiB")
        let uploadID = try await createMultipartUpload(key: key, metadata: metadata)
        do {
            var parts: [(number: Int, etag: String)] = []
            var offset = body.startIndex
            repeat {
                let end = min(offset + partSize, body.endIndex)
                let number = parts.count + 1
                parts.append(
                    (number, try await uploadPart(key: key, uploadID: uploadID, partNumber: number, body: body[offset..<end])))
                offset = end
            } while offset < body.endIndex
            return try await completeMultipartUpload(key: key, uploadID: uploadID, parts: parts)
        } catch {
            try? await abortMultipartUpload(key: key, uploadID: uploadID)
            throw error
        }
    }

    // MARK: Requests

    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    /// The object's path, path-style: `/basePath/bucket/key`.
    func objectPath(_ key: String) -> String {
        configuration.endpoint.basePath + "/" + configuration.bucket + (key.isEmpty ? "" : "/" + key)
    }

    func send(
        _ operation: String, key: String, method: HTTPMethod, query: [(name: String, value: String)] = [],
        body: Data? = nil, headers extra: [(name: String, value: String)] = []
    ) async throws -> Answer {
        let path = objectPath(key)
        var payloadHash = SigV4Signer.emptyPayloadHash
        var headers: [(name: String, value: String)] = [("host", configuration.endpoint.hostHeader)]
        if let body {
            // Hashing megabytes takes tens of milliseconds: on NIO's blocking pool, not the concurrency pool.
            let (sha256, md5) = try await NIOThreadPool.singleton.runIfActive {
                (SigV4Signer.payloadHash(body), Data(Insecure.MD5.hash(data: body)).base64EncodedString())
            }
            payloadHash = sha256
            headers.append(("Content-MD5", md5))
        }
        headers.append(("x-amz-content-sha256", payloadHash))
        headers += extra
        let signature = signer.sign(
            .init(method: method.rawValue, path: path, query: query, headers: headers, payloadHash: payloadHash),
            at: Date())
        let canonicalQuery = SigV4Signer.canonicalQuery(query)
        var request = HTTPClientRequest(
            url: "\(configuration.endpoint.scheme)://\(configuration.endpoint.hostHeader)\(SigV4Signer.canonicalPath(path))"
                + (canonicalQuery.isEmpty ? "" : "?" + canonicalQuery))
        request.method = method
        for (name, value) in headers + signature.addedHeaders { request.headers.add(name: name, value: value) }
        if let body {
            request.body = .bytes(body)
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: configuration.requestTimeout)
        } catch {
            throw S3Error(operation: operation, key: key, kind: .transport(Self.describeTransport(error)))
        }
        let bytes: ByteBuffer
        do {
            bytes = try await response.body.collect(upTo: Self.maximumBodyBytes)
        } catch {
            throw S3Error(operation: operation, key: key, kind: .transport(Self.describeTransport(error)))
        }
        let status = Int(response.status.code)
        guard (200..<300).contains(status) else {
            throw Self.storeError(operation: operation, key: key, status: status, body: bytes, headers: response.headers)
        }
        return Answer(status: status, headers: response.headers, body: bytes)
    }

    static func storeError(operation: String, key: String, status: Int, body: ByteBuffer, headers: HTTPHeaders) -> S3Error {
        let root = try? S3XML.parse(body.readableBytesView)
        let code = root?.value("Code") ?? HTTPResponseStatus(statusCode: status).reasonPhrase
        let message = root?.value("Message") ?? (root == nil && body.readableBytes > 0 ? "(no XML error body)" : "")
        let requestID = root?.value("RequestId") ?? headers.first(name: "x-amz-request-id")
        return S3Error(
            operation: operation, key: key, kind: .store(status: status, code: code, message: message, requestID: requestID))
    }

    /// A 2xx body as XML; an `<Error>` root in it is the store's failure, whatever the status said.
    static func xml(_ body: ByteBuffer, operation: String, key: String) throws -> XMLElement {
        let root: XMLElement
        do {
            root = try S3XML.parse(body.readableBytesView)
        } catch {
            throw S3Error(operation: operation, key: key, kind: .unexpectedAnswer(error.description))
        }
        if root.name == "Error" {
            throw S3Error(
                operation: operation, key: key,
                kind: .store(
                    status: 200, code: root.value("Code") ?? "Error", message: root.value("Message") ?? "",
                    requestID: root.value("RequestId")))
        }
        return root
    }

    static func metadataHeaders(_ metadata: [String: String]) -> [(name: String, value: String)] {
        metadata.sorted { $0.key < $1.key }.map { ("x-amz-meta-" + $0.key.lowercased(), $0.value) }
    }

    /// The ETag S3 gives an object uploaded in these parts: the MD5 of the parts' MD5s, then `-` and their count.
    /// A single PutObject's ETag is the plain MD5 of the body.
    public static func expectedETag(of body: Data, partSize: Int?) -> String {
        guard let partSize else { return SigV4Signer.hex(Insecure.MD5.hash(data: body)) }
        var digests = Data()
        var count = 0
        var offset = body.startIndex
        repeat {
            let end = min(offset + partSize, body.endIndex)
            digests.append(contentsOf: Insecure.MD5.hash(data: body[offset..<end]))
            count += 1
            offset = end
        } while offset < body.endIndex
        return SigV4Signer.hex(Insecure.MD5.hash(data: digests)) + "-\(count)"
    }

    static func unquoted(_ etag: String) -> String {
        etag.hasPrefix("\"") && etag.hasSuffix("\"") && etag.count >= 2 ? String(etag.dropFirst().dropLast()) : etag
    }

    static func describeTransport(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connection timed out"
            case .deadlineExceeded, .readTimeout: return "the request timed out"
            case .remoteConnectionClosed: return "the store closed the connection"
            default: return "\(error)"
            }
        }
        if let error = error as? NIOSSLError { return "TLS: \(error) (check --archive-ca and the endpoint's host name)" }
        if let error = error as? BoringSSLError { return "TLS: \(error) (check --archive-ca and the endpoint's host name)" }
        return "\(error)"
    }
}
