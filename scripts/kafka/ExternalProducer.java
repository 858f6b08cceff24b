// A producer that is not ours: Apache Kafka's own Java client writing records with a chosen
// compression codec, their values encoded by Apache Avro's Java library in the Confluent wire
// format, so tests can check that the processor reads what a Java service of the platform
// writes (its zstd, lz4, snappy and gzip come from zstd-jni, lz4-java, snappy-java and the JDK,
// not from librdkafka).
//
// Run through `scripts/services.sh kafka-produce <topic> <registry-url|-> [bootstrap]` (source-file
// mode of `java`, no build step; scripts/kafka/client-pom.xml pins the libraries). Reads one record
// per stdin line, `<codec> <base64 key> <base64 value>`, codec one of none|gzip|snappy|lz4|zstd.
// With a registry URL (its Confluent-compatible API) the value is the record in Avro's JSON
// encoding: it is written with the latest schema of subject `<topic>-value` as a Confluent
// serializer configured with use.latest.version would (magic byte 0, the schema id, Avro
// binary). With `-` the value bytes are sent as they are.
// Each codec gets its own idempotent producer (acks=all); its records are flushed before the
// next codec starts. Prints `<codec> <partition> <offset>` per record on stdout; exits non-zero on
// the first failure.
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class ExternalProducer {
    /// The latest schema of a subject and its registry id.
    record Latest(int id, Schema schema) {}

    static Latest latest(String registry, String subject) throws Exception {
        String url = registry.replaceAll("/+$", "") + "/subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8) + "/versions/latest";
        HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create(url)).GET().build(), HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) throw new IllegalStateException("GET " + url + ": HTTP " + r.statusCode() + ": " + r.body());
        JsonNode body = new ObjectMapper().readTree(r.body());
        return new Latest(body.get("id").asInt(), new Schema.Parser().parse(body.get("schema").asText()));
    }

    /// Avro JSON -> Confluent wire format: magic byte 0, the 4-byte schema id, Avro binary.
    static byte[] encode(Latest latest, String json) throws Exception {
        Object datum = new GenericDatumReader<Object>(latest.schema()).read(null, DecoderFactory.get().jsonDecoder(latest.schema(), json));
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(0);
        out.write(ByteBuffer.allocate(4).putInt(latest.id()).array());
        BinaryEncoder enc = EncoderFactory.get().binaryEncoder(out, null);
        new GenericDatumWriter<Object>(latest.schema()).write(datum, enc);
        enc.flush();
        return out.toByteArray();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: ExternalProducer <bootstrap> <topic> <registry-url|->  (stdin: <codec> <base64 key> <base64 value> per line)");
            System.exit(2);
        }
        String bootstrap = args[0], topic = args[1];
        Latest schema = args[2].equals("-") ? null : latest(args[2], topic + "-value");
        // The client logs to the console (or warns that it cannot); keep stdout for the acknowledgements.
        PrintStream acks = System.out;
        System.setOut(System.err);
        // Codec -> records, in input order.
        Map<String, List<byte[][]>> byCodec = new LinkedHashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.trim().split("\\s+");
            if (f.length != 3) throw new IllegalArgumentException("expected <codec> <base64 key> <base64 value>: " + line);
            byte[] value = Base64.getDecoder().decode(f[2]);
            if (schema != null) value = encode(schema, new String(value, StandardCharsets.UTF_8));
            byCodec.computeIfAbsent(f[0], c -> new ArrayList<>()).add(new byte[][] {Base64.getDecoder().decode(f[1]), value});
        }
        for (Map.Entry<String, List<byte[][]>> e : byCodec.entrySet()) {
            Properties p = new Properties();
            p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, e.getKey());
            p.put(ProducerConfig.ACKS_CONFIG, "all");
            p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
            p.put(ProducerConfig.CLIENT_ID_CONFIG, "external-java-producer-" + e.getKey());
            try (KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
                List<Future<RecordMetadata>> sent = new ArrayList<>();
                for (byte[][] kv : e.getValue()) sent.add(producer.send(new ProducerRecord<>(topic, kv[0], kv[1])));
                producer.flush();
                for (Future<RecordMetadata> f : sent) {
                    RecordMetadata m = f.get();
                    acks.println(e.getKey() + " " + m.partition() + " " + m.offset());
                }
            }
        }
    }
}
