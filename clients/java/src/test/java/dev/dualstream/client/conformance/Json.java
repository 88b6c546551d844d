package dev.dualstream.client.conformance;

import java.util.Map;

/**
 * Just enough JSON for the conformance app's lines: objects of strings, numbers, booleans and
 * objects.
 */
final class Json {
  private Json() {}

  static String object(Map<String, ?> fields) {
    StringBuilder json = new StringBuilder();
    object(json, fields);
    return json.toString();
  }

  private static void object(StringBuilder json, Map<?, ?> fields) {
    json.append('{');
    boolean first = true;
    for (Map.Entry<?, ?> field : fields.entrySet()) {
      if (!first) {
        json.append(',');
      }
      first = false;
      string(json, String.valueOf(field.getKey()));
      json.append(':');
      Object value = field.getValue();
      if (value instanceof Number || value instanceof Boolean) {
        json.append(value);
      } else if (value instanceof Map<?, ?> nested) {
        object(json, nested);
      } else {
        string(json, String.valueOf(value));
      }
    }
    json.append('}');
  }

  private static void string(StringBuilder json, String text) {
    json.append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"' -> json.append("\\\"");
        case '\\' -> json.append("\\\\");
        case '\n' -> json.append("\\n");
        case '\r' -> json.append("\\r");
        case '\t' -> json.append("\\t");
        default -> {
          if (c < 0x20) {
            json.append(String.format("\\u%04x", (int) c));
          } else {
            json.append(c);
          }
        }
      }
    }
    json.append('"');
  }
}
