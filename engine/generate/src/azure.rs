//! Azure AD sign-in records, in the shape of Azure's diagnostic-settings export (the shape of
//! Morpheus' `azure_ad_example_record.json`): top-level `time`, `category`, `resultType` ...
//! and the sign-in itself under `properties`.
//!
//! Records are serde-derived structs borrowing from the users and catalogs, written straight to
//! the file; ids that need no randomness of their own (correlation and request ids, the token
//! identifier) are derived from the event id.

use std::io::Write;

use serde::{Serialize, Serializer};

use crate::cities::{asn, city_at};
use crate::json::{EmptyList, EmptyObject, Ip, Iso, MaybeUuid, Uuid};
use crate::random::{derived_uuid, mix, name_uuid, splitmix};
use crate::world::{Event, FailKind, World};

/// An app of the tenant.
pub(super) struct App {
    /// `appDisplayName`.
    pub name: &'static str,
    /// `resourceDisplayName`: what the app signs in to.
    pub resource: &'static str,
    /// How many users have it among their usual apps, relatively.
    pub popularity: u32,
}

const fn app(name: &'static str, resource: &'static str, popularity: u32) -> App {
    App {
        name,
        resource,
        popularity,
    }
}

const EXCHANGE: &str = "Office 365 Exchange Online";
const SHAREPOINT: &str = "Office 365 SharePoint Online";
const GRAPH: &str = "Microsoft Graph";
const ARM: &str = "Windows Azure Service Management API";

/// The app catalog; an event's `app` indexes it.
pub(super) const APPS: &[App] = &[
    app("Microsoft Teams", "Microsoft Teams Services", 10),
    app(EXCHANGE, EXCHANGE, 10),
    app("Microsoft Office", GRAPH, 8),
    app(SHAREPOINT, SHAREPOINT, 6),
    app("OneDrive SyncEngine", SHAREPOINT, 5),
    app(
        "Microsoft Authentication Broker",
        "Device Registration Service",
        5,
    ),
    app("Windows Sign In", "Windows Azure Active Directory", 6),
    app("Outlook Mobile", EXCHANGE, 4),
    app("Azure Portal", ARM, 3),
    app("Microsoft Azure CLI", ARM, 1),
    app("Microsoft Azure PowerShell", ARM, 1),
    app("Visual Studio Code", GRAPH, 2),
    app("Azure DevOps", "Azure DevOps", 2),
    app("Power BI Service", "Power BI Service", 2),
    app("Salesforce", "Salesforce", 2),
    app("ServiceNow", "ServiceNow", 2),
    app("Workday", "Workday", 2),
    app(
        "Adobe Identity Management",
        "Adobe Identity Management Service",
        2,
    ),
    app("Zoom", "Zoom", 3),
    app("Slack", "Slack", 2),
    app("GitHub Enterprise Cloud", "GitHub Enterprise Cloud", 2),
    app("Atlassian Cloud", "Atlassian Cloud", 2),
    app("AWS Single-Account Access", "AWS Single-Account Access", 1),
    app("Box", "Box", 1),
    app("DocuSign", "DocuSign", 1),
    app("SAP Concur", "SAP Concur", 1),
    app("Tableau Cloud", "Tableau Cloud", 1),
    app("Microsoft Intune Company Portal", "Microsoft Intune", 1),
    app("My Apps", GRAPH, 1),
    app("Graph Explorer", GRAPH, 1),
    app("Dynamics CRM Online", "Dynamics CRM Online", 1),
    app("Microsoft Forms", "Microsoft Forms", 1),
    app("Microsoft Planner", "Microsoft Planner", 1),
    app("Power Automate", "Microsoft Flow Service", 1),
];

/// The ids Azure shows for an app, stable across runs.
pub(super) struct AppIds {
    app: u128,
    resource: u128,
    resource_sp: u128,
}

/// Ids for every app of [`APPS`].
pub(super) fn app_ids() -> Vec<AppIds> {
    APPS.iter()
        .map(|a| AppIds {
            app: name_uuid(a.name, 1),
            resource: name_uuid(a.resource, 2),
            resource_sp: name_uuid(a.resource, 3),
        })
        .collect()
}

/// Azure's error code (number and text) and reason for a failure.
fn failure(kind: FailKind) -> (u32, &'static str, &'static str) {
    match kind {
        FailKind::BadSecret => (
            50126,
            "50126",
            "Error validating credentials due to invalid username or password.",
        ),
        FailKind::MfaRequired => (50074, "50074", "Strong Authentication is required."),
        FailKind::MfaTimeout | FailKind::Fraud => (
            500121,
            "500121",
            "Authentication failed during strong authentication request.",
        ),
        FailKind::MfaDenied => (
            50158,
            "50158",
            "External security challenge was not satisfied.",
        ),
        FailKind::Interrupt => (
            50140,
            "50140",
            "This error occurred due to 'Keep me signed in' interrupt when the user was signing in.",
        ),
        FailKind::SessionExpired => (
            70044,
            "70044",
            "The session has expired or is invalid due to sign-in frequency checks by conditional access.",
        ),
        FailKind::Locked => (
            50053,
            "50053",
            "Account is locked because user tried to sign in too many times with an incorrect user ID or password.",
        ),
        FailKind::Blocked => (
            53003,
            "53003",
            "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
        ),
        FailKind::NotPermitted => (
            50105,
            "50105",
            "The signed in user is not assigned to a role for the application.",
        ),
    }
}

/// `uniqueTokenIdentifier`: 48 URL-safe base64 characters derived from the event id.
struct Token(u128);

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = [b'A'; 48];
        let mut state = mix(&[self.0 as u64, (self.0 >> 64) as u64, 0x70_6b]);
        let mut x = 0;
        for (i, c) in out.iter_mut().enumerate() {
            if i % 10 == 0 {
                state = splitmix(state);
                x = state;
            }
            *c = B64[(x & 63) as usize];
            x >>= 6;
        }
        s.serialize_str(std::str::from_utf8(&out).unwrap_or(""))
    }
}

#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "Level")]
    level: u8,
    #[serde(rename = "callerIpAddress")]
    caller_ip_address: Ip,
    category: &'static str,
    #[serde(rename = "correlationId")]
    correlation_id: Uuid,
    #[serde(rename = "durationMs")]
    duration_ms: u32,
    identity: &'a str,
    location: &'static str,
    #[serde(rename = "operationName")]
    operation_name: &'static str,
    #[serde(rename = "operationVersion")]
    operation_version: &'static str,
    properties: Properties<'a>,
    #[serde(rename = "resourceId")]
    resource_id: &'a str,
    #[serde(rename = "resultDescription")]
    result_description: &'static str,
    #[serde(rename = "resultSignature")]
    result_signature: &'static str,
    #[serde(rename = "resultType")]
    result_type: &'static str,
    #[serde(rename = "tenantId")]
    tenant_id: Uuid,
    time: Iso,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Properties<'a> {
    app_display_name: &'static str,
    app_id: Uuid,
    app_service_principal_id: Option<&'static str>,
    applied_conditional_access_policies: EmptyList,
    authentication_context_class_references: EmptyList,
    authentication_details: EmptyList,
    authentication_processing_details: EmptyList,
    authentication_protocol: &'static str,
    authentication_requirement: &'static str,
    authentication_requirement_policies: EmptyList,
    autonomous_system_number: u32,
    client_app_used: &'static str,
    client_credential_type: &'static str,
    conditional_access_status: &'static str,
    correlation_id: Uuid,
    created_date_time: Iso,
    cross_tenant_access_type: &'static str,
    device_detail: DeviceDetail<'a>,
    flagged_for_review: bool,
    home_tenant_id: Uuid,
    id: Uuid,
    incoming_token_type: &'static str,
    ip_address: Ip,
    is_interactive: bool,
    is_tenant_restricted: bool,
    location: Location,
    network_location_details: EmptyList,
    original_request_id: Uuid,
    private_link_details: EmptyObject,
    processing_time_in_milliseconds: u32,
    resource_display_name: &'static str,
    resource_id: Uuid,
    resource_service_principal_id: Uuid,
    resource_tenant_id: Uuid,
    risk_detail: &'static str,
    risk_event_types: EmptyList,
    #[serde(rename = "riskEventTypes_v2")]
    risk_event_types_v2: EmptyList,
    risk_level_aggregated: &'static str,
    risk_level_during_sign_in: &'static str,
    risk_state: &'static str,
    rngc_status: u32,
    service_principal_id: &'static str,
    sso_extension_version: &'static str,
    status: Status,
    token_issuer_name: &'static str,
    token_issuer_type: &'static str,
    unique_token_identifier: Token,
    user_agent: &'a str,
    user_display_name: &'a str,
    user_id: Uuid,
    user_principal_name: &'a str,
    user_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceDetail<'a> {
    browser: &'a str,
    device_id: MaybeUuid,
    display_name: &'a str,
    operating_system: &'static str,
    trust_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    city: &'static str,
    country_or_region: &'static str,
    geo_coordinates: Geo,
    state: &'static str,
}

#[derive(Serialize)]
struct Geo {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    error_code: u32,
    failure_reason: &'static str,
}

/// Writes `e` as one Azure AD sign-in record.
pub(super) fn write_record<W: Write>(
    w: &mut W,
    world: &World,
    e: &Event,
) -> serde_json::Result<()> {
    use serde::ser::Error as _;
    let (user, device) = world.user_and_device(e)?;
    let app = APPS
        .get(usize::from(e.app))
        .zip(world.azure_apps.get(usize::from(e.app)))
        .ok_or_else(|| serde_json::Error::custom("event of an unknown app"))?;
    let city = city_at(e.city);
    let era = usize::from(e.era);
    let (code, code_text, reason) = match e.fail {
        Some(kind) => failure(kind),
        None => (0, "0", "Other."),
    };
    let processing = 40 + (mix(&[e.id as u64, 0x9c]) % 360) as u32;
    let interactive = e.interactive;
    let record = Record {
        level: 4,
        caller_ip_address: Ip(e.ip),
        category: if interactive {
            "SignInLogs"
        } else {
            "NonInteractiveUserSignInLogs"
        },
        correlation_id: Uuid(derived_uuid(e.id, 1)),
        duration_ms: 0,
        identity: &user.display,
        location: city.code,
        operation_name: "Sign-in activity",
        operation_version: "1.0",
        properties: Properties {
            app_display_name: app.0.name,
            app_id: Uuid(app.1.app),
            app_service_principal_id: None,
            applied_conditional_access_policies: EmptyList,
            authentication_context_class_references: EmptyList,
            authentication_details: EmptyList,
            authentication_processing_details: EmptyList,
            authentication_protocol: "none",
            authentication_requirement: if interactive {
                "multiFactorAuthentication"
            } else {
                "singleFactorAuthentication"
            },
            authentication_requirement_policies: EmptyList,
            autonomous_system_number: asn(e.ip),
            client_app_used: if e.browser_client {
                "Browser"
            } else {
                "Mobile Apps and Desktop clients"
            },
            client_credential_type: "none",
            conditional_access_status: match e.fail {
                Some(FailKind::Blocked) => "failure",
                _ if interactive => "success",
                _ => "notApplied",
            },
            correlation_id: Uuid(derived_uuid(e.id, 2)),
            created_date_time: Iso::zulu(e.micros + i64::from(processing) * 1000),
            cross_tenant_access_type: "none",
            device_detail: DeviceDetail {
                browser: &device.azure_browser[era],
                device_id: MaybeUuid(device.device_id),
                display_name: &device.display_name,
                operating_system: device.azure_os[era],
                trust_type: device.trust_type,
            },
            flagged_for_review: false,
            home_tenant_id: Uuid(world.tenant),
            id: Uuid(e.id),
            incoming_token_type: if interactive {
                "none"
            } else {
                "primaryRefreshToken"
            },
            ip_address: Ip(e.ip),
            is_interactive: interactive,
            is_tenant_restricted: false,
            location: Location {
                city: city.name,
                country_or_region: city.code,
                geo_coordinates: Geo {
                    latitude: city.lat,
                    longitude: city.lon,
                },
                state: city.state,
            },
            network_location_details: EmptyList,
            original_request_id: Uuid(derived_uuid(e.id, 3)),
            private_link_details: EmptyObject,
            processing_time_in_milliseconds: processing,
            resource_display_name: app.0.resource,
            resource_id: Uuid(app.1.resource),
            resource_service_principal_id: Uuid(app.1.resource_sp),
            resource_tenant_id: Uuid(world.tenant),
            risk_detail: "none",
            risk_event_types: EmptyList,
            risk_event_types_v2: EmptyList,
            risk_level_aggregated: "none",
            risk_level_during_sign_in: "none",
            risk_state: "none",
            rngc_status: 0,
            service_principal_id: "",
            sso_extension_version: "",
            status: Status {
                error_code: code,
                failure_reason: reason,
            },
            token_issuer_name: "",
            token_issuer_type: "AzureAD",
            unique_token_identifier: Token(e.id),
            user_agent: &device.user_agent[era],
            user_display_name: &user.display,
            user_id: Uuid(user.id),
            user_principal_name: &user.name,
            user_type: "Member",
        },
        resource_id: &world.tenant_path,
        result_description: if e.fail.is_some() { reason } else { "" },
        result_signature: "None",
        result_type: code_text,
        tenant_id: Uuid(world.tenant),
        time: Iso::zulu(e.micros),
    };
    serde_json::to_writer(w, &record)
}
