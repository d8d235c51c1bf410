// Test oracle: the IAB Tech Lab reference library (@iabtechlabtcf/core) decodes and
// encodes TC strings for tests/privacy/test_tcf_oracle.py.
//
// stdin:  {"decode": [string, ...], "encode": [spec, ...]}
// stdout: {"decoded": [result, ...], "encoded": [string, ...]}
//
// A decode result is {"ok": false, "error": "<error class>"} when TCString.decode throws,
// else every field the gateway reads. An encode spec sets TCModel fields and is written
// with the reference SegmentEncoder segment by segment: TCString.encode needs a Global
// Vendor List and silently drops vendors it does not list, which would hide from the
// comparison exactly the vendor ids a test chooses.
"use strict";

const tcf = require("@iabtechlabtcf/core");

const ids = (vector) => {
  const out = [];
  for (const id of vector.values()) out.push(id);
  return out.sort((a, b) => a - b);
};

const restrictions = (vector) => {
  const out = [];
  for (const r of vector.getRestrictions()) {
    out.push({
      purpose: r.purposeId,
      type: r.restrictionType,
      vendors: vector.getVendors(r),
    });
  }
  return out.sort((a, b) => a.purpose - b.purpose || a.type - b.type);
};

function decodeOne(text) {
  let m;
  try {
    m = tcf.TCString.decode(text);
  } catch (err) {
    return { ok: false, error: err && err.name ? err.name : String(err) };
  }
  return {
    ok: true,
    version: m.version,
    created_ds: Math.round(m.created.getTime() / 100),
    last_updated_ds: Math.round(m.lastUpdated.getTime() / 100),
    cmp_id: m.cmpId,
    cmp_version: m.cmpVersion,
    consent_screen: m.consentScreen,
    consent_language: m.consentLanguage,
    vendor_list_version: m.vendorListVersion,
    policy_version: m.policyVersion,
    is_service_specific: m.isServiceSpecific,
    use_non_standard_texts: m.useNonStandardTexts,
    special_feature_optins: ids(m.specialFeatureOptins),
    purpose_consents: ids(m.purposeConsents),
    purpose_legitimate_interests: ids(m.purposeLegitimateInterests),
    purpose_one_treatment: m.purposeOneTreatment,
    publisher_country_code: m.publisherCountryCode,
    vendor_consents: ids(m.vendorConsents),
    vendor_legitimate_interests: ids(m.vendorLegitimateInterests),
    publisher_restrictions: restrictions(m.publisherRestrictions),
    vendors_disclosed: ids(m.vendorsDisclosed),
    vendors_allowed: ids(m.vendorsAllowed),
    publisher_consents: ids(m.publisherConsents),
    publisher_legitimate_interests: ids(m.publisherLegitimateInterests),
    num_custom_purposes: m.numCustomPurposes,
    publisher_custom_consents: ids(m.publisherCustomConsents),
    publisher_custom_legitimate_interests: ids(m.publisherCustomLegitimateInterests),
  };
}

function encodeOne(spec) {
  const m = new tcf.TCModel();
  const scalars = [
    "cmpId", "cmpVersion", "consentScreen", "consentLanguage", "vendorListVersion",
    "policyVersion", "isServiceSpecific", "useNonStandardTexts", "purposeOneTreatment",
    "publisherCountryCode", "numCustomPurposes",
  ];
  for (const key of scalars) if (key in spec) m[key] = spec[key];
  if ("createdDs" in spec) m.created = new Date(spec.createdDs * 100);
  if ("lastUpdatedDs" in spec) m.lastUpdated = new Date(spec.lastUpdatedDs * 100);
  const vectors = [
    "specialFeatureOptins", "purposeConsents", "purposeLegitimateInterests",
    "vendorConsents", "vendorLegitimateInterests", "vendorsDisclosed", "vendorsAllowed",
    "publisherConsents", "publisherLegitimateInterests", "publisherCustomConsents",
    "publisherCustomLegitimateInterests",
  ];
  for (const key of vectors) if (spec[key] && spec[key].length) m[key].set(spec[key]);
  // The restriction encoder joins runs across ids its vendor list lacks; the spec
  // names that list (default: every id, so runs are exactly the contiguous ones).
  const restricted = spec.publisherRestrictions || [];
  const top = Math.max(1, ...restricted.flatMap((r) => r.vendors));
  const known = spec.knownVendorIds || Array.from({ length: top }, (_, i) => i + 1);
  m.publisherRestrictions.gvl = { vendorIds: new Set(known) };
  for (const r of restricted) {
    const restriction = new tcf.PurposeRestriction(r.purpose, r.type);
    for (const vendor of r.vendors) m.publisherRestrictions.add(vendor, restriction);
  }
  const segments = spec.segments || [tcf.Segment.CORE];
  return segments.map((segment) => tcf.SegmentEncoder.encode(m, segment)).join(".");
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const request = JSON.parse(input);
  const out = {
    decoded: (request.decode || []).map(decodeOne),
    encoded: (request.encode || []).map(encodeOne),
  };
  process.stdout.write(JSON.stringify(out));
});
