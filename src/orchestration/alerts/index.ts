export { SiteAlerts, type AlertOptions, type AlertParts, type AlertQuery } from './alerts.js';
export { RULES, type RuleInfo, type RuleName, type Severity } from './rules.js';
export type { Alert } from './store.js';
export type { Silence } from './silences.js';
export type { AddChannelRequest, Channel, ChannelConfig, EmailConfig, WebhookConfig } from './channels.js';
export { webhookSignature, SIGNATURE_HEADER, TIMESTAMP_HEADER, type Notification } from './senders.js';
export type { DeliveryOptions } from './deliveries.js';
export { repositoryUsage } from './state.js';
